/* The Squid native collector's host-filter pre-pass, in C (see monitor/accel.py).
 *
 * native_filter(lines, clean, rejects, markers=()) -> (records, todo)
 *
 * For each line of a batch, it does what the first branch of SquidCollector._parse_native
 * does when a host filter is set: a line of exactly ten whitespace-separated fields whose
 * target (the CONNECT host:port, or a URL's scheme://authority) the filter has already
 * rejected (rejects[target] is True) and whose fields are well formed is a record that is
 * counted and dropped. It is stricter than the Python code, never looser: every line it is
 * not sure of (any other shape, a target not yet in `rejects`, a timestamp that is not
 * plain digits[.digits] below 1e10) goes to `todo`, the list of indexes the Python loop
 * then reads, in order. Lines are only read; nothing here allocates per line except the
 * lookup key. A URL (not a CONNECT target) whose path holds one of `markers` (byte
 * strings an LLM API path holds) goes to `todo` even when its target is rejected: the
 * Python loop decides whether the request is LLM-shaped.
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

/* 1: counted and dropped; 0: to the Python loop; -1: error set */
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

static int
rejected_record(const char *s, Py_ssize_t n, int clean, PyObject *rejects, PyObject *markers)
{
    const char *tok[FIELDS];
    Py_ssize_t len[FIELDS];
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
    if (!all_digits(tok[1], len[1]) || !all_digits(tok[4], len[4]) ||
        !code_status(tok[3], len[3]) || !plain_ts(tok[0], len[0]))
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
    if (verdict != Py_True)
        return 0;
    if (tlen < len[6] && has_marker(target + tlen, len[6] - tlen, markers))
        return 0; /* a URL whose path may be an LLM API's */
    return 1;
}

static PyObject *
native_filter(PyObject *self, PyObject *args)
{
    PyObject *lines, *rejects, *markers = NULL;
    int clean;

    if (!PyArg_ParseTuple(args, "O!pO!|O!:native_filter", &PyList_Type, &lines, &clean,
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
    if (todo == NULL)
        return NULL;
    Py_ssize_t records = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(lines); k++) {
        PyObject *line = PyList_GET_ITEM(lines, k);
        int r = 0;
        if (PyBytes_Check(line)) {
            Py_INCREF(line); /* a dict lookup may run Python code that changes the list */
            r = rejected_record(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), clean,
                                rejects, markers);
            Py_DECREF(line);
        }
        if (r < 0)
            goto fail;
        if (r) {
            records++;
            continue;
        }
        PyObject *index = PyLong_FromSsize_t(k);
        if (index == NULL)
            goto fail;
        int err = PyList_Append(todo, index);
        Py_DECREF(index);
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
    {"native_filter", native_filter, METH_VARARGS,
     "native_filter(lines, clean, rejects, markers=()) -> (records, todo): count the lines "
     "whose target the host filter rejected (unless their URL path holds a marker); the "
     "indexes of the others, for the Python loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_squidscan",
    "Squid native collector: the host-filter pre-pass in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__squidscan(void)
{
    PyObject *m = PyModule_Create(&module);
    /* 2: native_filter takes `markers`; squid.py ignores a module built before that */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
