/* The Squid native collector's pre-pass, in C (see monitor/accel.py).
 *
 * native_scan(lines, clean, rejects, markers=()) -> (records, todo)
 *
 * For each line of a batch, it does what the first steps of SquidCollector._parse_native
 * do when a host filter is set. A line of exactly ten whitespace-separated fields whose
 * fields are well formed and whose target (the CONNECT host:port, or a URL's
 * scheme://authority) the filter has already judged is
 *   - rejected (rejects[target] is True): a record that is counted and dropped, unless it
 *     is a URL whose path holds one of `markers` (byte strings an LLM API path holds);
 *   - kept (rejects[target] is False): split into its fields, the tuple
 *     (index, ts, elapsed, client, code/status, size, method, target, user, peer) with ts a
 *     float, elapsed and size ints and the rest the fields' bytes, appended to `todo`.
 * Every other line (any other shape, a target not yet in `rejects`, a timestamp that is
 * not plain digits[.digits] below 1e10, a marker in a rejected URL) goes to `todo` as its
 * index, for the Python loop to read. It is stricter than the Python code, never looser;
 * `todo` keeps the order of the lines. Rejected lines are only read: nothing is allocated
 * for them but the lookup key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define FIELDS 10

/* bytes.split() separators (Py_ISSPACE): space and \t \n \v \f \r */
static const unsigned char SPACE[256] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1,
};
#define is_space(c) (SPACE[(unsigned char)(c)])

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

/* 1 when s[0:n] holds one of the byte strings of the tuple `markers` */
static int
has_marker(const char *s, Py_ssize_t n, PyObject *markers)
{
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(markers); k++) {
        PyObject *m = PyTuple_GET_ITEM(markers, k);
        if (!PyBytes_Check(m) || PyBytes_GET_SIZE(m) == 0)
            continue;
        if (memmem(s, (size_t)n, PyBytes_AS_STRING(m), (size_t)PyBytes_GET_SIZE(m)) != NULL)
            return 1;
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
        while (i < n && !is_space((unsigned char)s[i]))
            i++;
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

/* the tuple a kept line becomes (see the top of this file) */
static PyObject *
fields_of(Py_ssize_t index, const char **tok, Py_ssize_t *len, double ts, long long elapsed,
          long long size)
{
    return Py_BuildValue("(ndLy#y#Ly#y#y#y#)", index, ts, elapsed, tok[2], len[2], tok[3],
                         len[3], size, tok[5], len[5], tok[6], len[6], tok[7], len[7], tok[8],
                         len[8]);
}

static PyObject *
native_scan(PyObject *self, PyObject *args)
{
    PyObject *lines, *rejects, *markers = NULL;
    int clean;

    if (!PyArg_ParseTuple(args, "O!pO!|O!:native_scan", &PyList_Type, &lines, &clean,
                          &PyDict_Type, &rejects, &PyTuple_Type, &markers))
        return NULL;
    if (markers == NULL) {
        markers = PyTuple_New(0);
        if (markers == NULL)
            return NULL;
    } else {
        Py_INCREF(markers);
    }
    PyObject *todo = PyList_New(0);
    if (todo == NULL) {
        Py_DECREF(markers);
        return NULL;
    }
    Py_ssize_t records = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(lines); k++) {
        PyObject *line = PyList_GET_ITEM(lines, k);
        const char *tok[FIELDS];
        Py_ssize_t len[FIELDS];
        double ts = 0;
        long long elapsed = 0, size = 0;
        int r = 0;
        PyObject *item = NULL;
        if (PyBytes_Check(line)) {
            Py_INCREF(line); /* a dict lookup may run Python code that changes the list */
            r = classify(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), clean, rejects,
                         markers, tok, len, &ts, &elapsed, &size);
            if (r == KEEP)
                item = fields_of(k, tok, len, ts, elapsed, size);
            Py_DECREF(line);
            if (r == KEEP && item == NULL)
                goto fail;
        }
        if (r < 0)
            goto fail;
        if (r == DROP) {
            records++;
            continue;
        }
        if (item == NULL) {
            item = PyLong_FromSsize_t(k);
            if (item == NULL)
                goto fail;
        }
        int err = PyList_Append(todo, item);
        Py_DECREF(item);
        if (err < 0)
            goto fail;
    }
    Py_DECREF(markers);
    return Py_BuildValue("nN", records, todo);
fail:
    Py_DECREF(markers);
    Py_DECREF(todo);
    return NULL;
}

static PyMethodDef methods[] = {
    {"native_scan", native_scan, METH_VARARGS,
     "native_scan(lines, clean, rejects, markers=()) -> (records, todo): count the lines "
     "whose target the host filter rejected (unless their URL path holds a marker); split "
     "those whose target it kept into their fields; the indexes of the others."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_squidscan",
    "Squid native collector: the host-filter pre-pass and field split in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__squidscan(void)
{
    PyObject *m = PyModule_Create(&module);
    /* 3: native_scan splits kept lines; squid.py ignores a module built before that */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
