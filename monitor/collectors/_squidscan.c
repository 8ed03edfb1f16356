/* The Squid native collector's pre-pass, in C (see monitor/accel.py).
 *
 * native_chunk(chunk, clean, max_line, rejects, markers=()) -> (records, todo)
 *
 * `chunk` holds whole lines, each ending in a newline (monitor.collectors.base.iter_chunks),
 * and after the last newline perhaps the start of a line that the next chunk holds, which
 * is not read. A line is what precedes its newline, without the carriage returns ending it. For each
 * line it does what the first steps of SquidCollector._parse_native do when a host filter
 * is set. A line of exactly ten whitespace-separated fields whose fields are well formed
 * and whose target (the CONNECT host:port, or a URL's scheme://authority) the filter has
 * already judged is
 *   - rejected (rejects[target] is True): a record that is counted and dropped, unless it
 *     is a URL whose path holds one of `markers` (byte strings an LLM API path holds);
 *   - kept (rejects[target] is False): split into its fields, the tuple
 *     (index, ts, elapsed, client, code/status, size, method, target, user, peer, line)
 *     with ts a float, elapsed and size ints and the rest bytes, appended to `todo`.
 * Every other line (any other shape, longer than max_line, a target not yet in `rejects`,
 * a timestamp that is not plain digits[.digits] below 1e10, a marker in a rejected URL)
 * goes to `todo` as (index, line), for the Python loop to read. It is stricter than the
 * Python code, never looser; `todo` keeps the order of the lines; `clean` says the chunk
 * holds no NUL byte. Rejected lines are only read: no object is made for them but the
 * lookup key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_accel.h"

#define FIELDS 10

/* bytes.split() separators (Py_ISSPACE): space and \t \n \v \f \r */
static const unsigned char SPACE[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1,
};
#define is_space(c) (SPACE[(unsigned char)(c)])

/* the end of the field starting at s[i]: the first separator at or after i, or n. Eight
 * bytes at a time where the byte order allows: the lowest byte below 0x21 of a word (the
 * lowest bit the test sets is exact) is a separator, or a control byte to step over. */
static Py_ssize_t
field_end(const char *s, Py_ssize_t i, Py_ssize_t n)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        uint64_t below = (w - ones * 0x21) & ~w & highs;
        if (below == 0) {
            i += 8;
            continue;
        }
        i += __builtin_ctzll(below) >> 3;
        if (is_space(s[i]))
            return i;
        i++;
    }
#endif
    while (i < n && !is_space((unsigned char)s[i]))
        i++;
    return i;
}

static int
all_digits(const char *s, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* %ts.%03tu: 1-10 digits, optionally '.' and 1+ digits (so 0 <= ts < 1e10) */
static int
plain_ts(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || i > 10)
        return 0;
    if (i == n)
        return 1;
    return s[i] == '.' && all_digits(s + i + 1, n - i - 1);
}

/* "TCP_MISS/200": a letter first, ASCII before the last '/', digits after it */
static int
code_status(const char *s, Py_ssize_t n)
{
    Py_ssize_t k = n - 1;
    while (k >= 0 && s[k] != '/')
        k--;
    if (k <= 0)
        return 0;
    unsigned char c0 = (unsigned char)s[0];
    if (!((c0 >= 'A' && c0 <= 'Z') || (c0 >= 'a' && c0 <= 'z')))
        return 0;
    for (Py_ssize_t i = 1; i < k; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return all_digits(s + k + 1, n - k - 1);
}

/* first occurrence of "://" in s[0:n], or -1 */
static Py_ssize_t
find_scheme_sep(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + 2 < n; i++)
        if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/')
            return i;
    return -1;
}

/* 1 when s[0:n] holds one of the byte strings of the tuple `markers`: each position whose
 * byte starts a marker is compared with those markers (a path has few such bytes) */
static int
has_marker(const char *s, Py_ssize_t n, PyObject *markers)
{
    unsigned char first[256] = {0};
    Py_ssize_t count = PyTuple_GET_SIZE(markers);
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *m = PyTuple_GET_ITEM(markers, k);
        if (PyBytes_Check(m) && PyBytes_GET_SIZE(m) > 0)
            first[(unsigned char)PyBytes_AS_STRING(m)[0]] = 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!first[(unsigned char)s[i]])
            continue;
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject *m = PyTuple_GET_ITEM(markers, k);
            if (!PyBytes_Check(m))
                continue;
            Py_ssize_t mlen = PyBytes_GET_SIZE(m);
            if (mlen > 0 && mlen <= n - i && memcmp(s + i, PyBytes_AS_STRING(m), (size_t)mlen) == 0)
                return 1;
        }
    }
    return 0;
}

/* digits only, at most 18 of them (no overflow): the value; else -1 */
static long long
small_int(const char *s, Py_ssize_t n)
{
    if (n > 18 || !all_digits(s, n))
        return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

#define DROP 1 /* counted and dropped */
#define KEEP 2 /* kept: split into fields */

/* DROP, KEEP; 0: to the Python loop by index; -1: error set. On KEEP, tok/len hold the
 * fields and *ts, *elapsed, *size their values. */
static int
classify(const char *s, Py_ssize_t n, int clean, PyObject *rejects, PyObject *markers,
         const char **tok, Py_ssize_t *len, double *ts, long long *elapsed, long long *size)
{
    int count = 0;
    Py_ssize_t i = 0;

    if (!clean && memchr(s, 0, (size_t)n) != NULL)
        return 0;
    while (1) {
        while (i < n && is_space((unsigned char)s[i]))
            i++;
        if (i >= n)
            break;
        if (count == FIELDS)
            return 0; /* an eleventh field */
        Py_ssize_t start = i;
        i = field_end(s, i, n);
        tok[count] = s + start;
        len[count] = i - start;
        count++;
    }
    if (count != FIELDS)
        return 0;
    *elapsed = small_int(tok[1], len[1]);
    *size = small_int(tok[4], len[4]);
    if (*elapsed < 0 || *size < 0 || !code_status(tok[3], len[3]) || !plain_ts(tok[0], len[0]))
        return 0;

    const char *target = tok[6];
    Py_ssize_t tlen = len[6];
    if (!(len[5] == 7 && memcmp(tok[5], "CONNECT", 7) == 0)) {
        Py_ssize_t sep = find_scheme_sep(target, tlen);
        if (sep > 0) {
            const char *slash = memchr(target + sep + 3, '/', (size_t)(tlen - sep - 3));
            if (slash != NULL)
                tlen = slash - target;
        }
    }
    PyObject *key = PyBytes_FromStringAndSize(target, tlen);
    if (key == NULL)
        return -1;
    PyObject *verdict = PyDict_GetItemWithError(rejects, key); /* borrowed */
    Py_DECREF(key);
    if (verdict == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (verdict == Py_False) {
        /* plain_ts: at most 10 digits, '.', digits; longer fractions go to Python */
        char buf[40];
        if (len[0] >= (Py_ssize_t)sizeof(buf))
            return 0;
        memcpy(buf, tok[0], (size_t)len[0]);
        buf[len[0]] = '\0';
        *ts = PyOS_string_to_double(buf, NULL, NULL);
        if (*ts == -1.0 && PyErr_Occurred())
            return -1;
        return KEEP;
    }
    if (verdict != Py_True)
        return 0;
    if (tlen < len[6] && has_marker(target + tlen, len[6] - tlen, markers))
        return 0; /* a URL whose path may be an LLM API's */
    return DROP;
}

/* the tuple a kept line becomes (see the top of this file); steals nothing */
static PyObject *
fields_of(Py_ssize_t index, const char **tok, Py_ssize_t *len, double ts, long long elapsed,
          long long size, const char *line, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(FIELDS + 1);
    if (t == NULL)
        return NULL;
    PyObject *v[FIELDS + 1] = {
        PyLong_FromSsize_t(index),
        PyFloat_FromDouble(ts),
        PyLong_FromLongLong(elapsed),
        PyBytes_FromStringAndSize(tok[2], len[2]),
        PyBytes_FromStringAndSize(tok[3], len[3]),
        PyLong_FromLongLong(size),
        PyBytes_FromStringAndSize(tok[5], len[5]),
        PyBytes_FromStringAndSize(tok[6], len[6]),
        PyBytes_FromStringAndSize(tok[7], len[7]),
        PyBytes_FromStringAndSize(tok[8], len[8]),
        PyBytes_FromStringAndSize(line, n),
    };
    int ok = 1;
    for (int k = 0; k <= FIELDS; k++) {
        if (v[k] == NULL)
            ok = 0;
        PyTuple_SET_ITEM(t, k, v[k]); /* a NULL slot is fine for Py_DECREF of the tuple */
    }
    if (!ok) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* (index, line): a line for the Python loop */
static PyObject *
handed_back(Py_ssize_t index, const char *line, Py_ssize_t n)
{
    return Py_BuildValue("(ny#)", index, line, n);
}

static PyObject *
native_chunk(PyObject *self, PyObject *args)
{
    PyObject *chunk, *rejects, *markers = NULL;
    int clean;
    Py_ssize_t max_line;

    if (!PyArg_ParseTuple(args, "SpnO!|O!:native_chunk", &chunk, &clean, &max_line,
                          &PyDict_Type, &rejects, &PyTuple_Type, &markers))
        return NULL;
    if (markers == NULL) {
        markers = PyTuple_New(0);
        if (markers == NULL)
            return NULL;
    } else {
        Py_INCREF(markers);
    }
    Py_INCREF(chunk); /* a dict lookup may run Python code; keep the buffer alive */
    PyObject *todo = PyList_New(0);
    if (todo == NULL)
        goto fail;
    const char *data = PyBytes_AS_STRING(chunk);
    Py_ssize_t size_all = PyBytes_GET_SIZE(chunk);
    Py_ssize_t records = 0, index = 0, pos = 0;
    while (pos < size_all) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', (size_t)(size_all - pos));
        if (nl == NULL)
            break; /* after the last newline: the start of the next chunk's first line */
        Py_ssize_t raw = nl - line;
        Py_ssize_t n = raw;
        while (n > 0 && line[n - 1] == '\r')
            n--;
        pos += raw + 1;
        const char *tok[FIELDS];
        Py_ssize_t len[FIELDS];
        double ts = 0;
        long long elapsed = 0, size = 0;
        int r = 0;
        if (n <= max_line) {
            r = classify(line, n, clean, rejects, markers, tok, len, &ts, &elapsed, &size);
            if (r < 0)
                goto fail;
        }
        if (r == DROP) {
            records++;
            index++;
            continue;
        }
        PyObject *item = r == KEEP ? fields_of(index, tok, len, ts, elapsed, size, line, n)
                                   : handed_back(index, line, n);
        if (item == NULL)
            goto fail;
        int err = PyList_Append(todo, item);
        Py_DECREF(item);
        if (err < 0)
            goto fail;
        index++;
    }
    Py_DECREF(chunk);
    Py_DECREF(markers);
    return Py_BuildValue("nN", records, todo);
fail:
    Py_DECREF(chunk);
    Py_DECREF(markers);
    Py_XDECREF(todo);
    return NULL;
}

static PyMethodDef methods[] = {
    {"native_chunk", native_chunk, METH_VARARGS,
     "native_chunk(chunk, clean, max_line, rejects, markers=()) -> (records, todo): over "
     "the lines of a chunk, count those whose target the host filter rejected (unless "
     "their URL path holds a marker); split those whose target it kept into their fields; "
     "(index, line) for the others."},
    {NULL, NULL, 0, NULL},
};

ACCEL_MODULE("_squidscan",
             "Squid native collector: the host-filter pre-pass and field split in C.");

PyMODINIT_FUNC
PyInit__squidscan(void)
{
    PyObject *m = PyModule_Create(&module);
    /* 4: native_chunk reads whole chunks; squid.py ignores a module built before that */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 4) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
