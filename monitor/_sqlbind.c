/* Rows bound to an INSERT and stepped in C, on a sqlite3.Connection's own handle: what
 * monitor/sqlbind.py's Python path (sqlite3's executemany over the zipped columns) does,
 * without building a tuple and an int or float object per value (see monitor/accel.py).
 *
 * insert(conn, sql, columns, via) -> (changes, stop)
 *
 * `columns` a list of equally long columns, each a list or tuple of values or an
 * array.array of typecode q, l, i or d (not a subclass, not another buffer); `via` per
 * column None (its values as they are), an int (added to each value: sqlbind's
 * ``map(via.__add__, column)``; not a bool or a subclass) or a list or tuple (each value an
 * index into it: ``map(via.__getitem__, column)``). Prepares `sql` once on the
 * connection's handle, binds each row, steps and resets it, finalizes the statement; the
 * changes are sqlite3_changes summed over the rows (executemany's rowcount). `stop` is None
 * when every row is done, else the first row this left undone (the column's length when a
 * callback of the steps resized a list column, the next row when the connection was
 * closed during a step): the caller runs executemany over the rows from there, so whatever this does
 * not bind exactly as Python's sqlite3 does (an int beyond 64 bits, a str that is not
 * UTF-8, a type it does not know, an index out of range, columns of different lengths, a
 * statement that is not one INSERT, a named parameter, any error binding) is bound, or
 * raised, by Python's sqlite3 itself. Errors of
 * sqlite3_step raise as _sqlite3's _pysqlite_seterror does (class by SQLite's result
 * code, SQLite's message, sqlite_errorcode; sqlbind.py adds sqlite_errorname).
 *
 * Safety. SQLite is called only through the library instance _sqlite3 itself calls: the
 * functions are looked up with dlsym through dlopen(_sqlite3.__file__, RTLD_NOLOAD) (that
 * module and the libraries it was loaded with), never linked here, and the module refuses
 * to load when the process's global scope (which a module's own references search first)
 * holds another definition of them. Before the first use a self-test on a private
 * :memory: connection proves (a) the instance is the same (SQLite's memory counter, which
 * is per instance, grows when Python's connection stores a megabyte), (b) the handle is
 * where this reads it (a random user_version set through Python reads back through it;
 * sqlite3_get_autocommit follows in_transaction), else every call returns stop 0. The
 * handle is the first member after PyObject_HEAD of _sqlite3's Connection object in
 * CPython 3.11 to 3.13 (Modules/_sqlite/connection.h); other builds compile a module that
 * does not import.
 *
 * The GIL is released around the sqlite3_step of the first row and of every
 * STEPS_PER_RELEASE-th after it (_sqlite3 releases it around each): the first row's step
 * takes the write lock when the transaction does not hold it yet, a wait that another
 * thread may need the GIL to end (its COMMIT); the later releases give other threads a
 * chance, no promise (a waiting thread asks for the GIL only after a switch interval with
 * no hand-over, and these quick re-takes count as hand-overs: one may wait out a batch, a
 * few tens of milliseconds at the store's 20,000 rows). Once the write lock is held (sqlbind.py calls this only inside
 * a transaction) a later step of an INSERT waits on no lock in WAL mode, the store's; a
 * release per row cost 6 % of this function's instructions (callgrind, 50,000 rows of
 * obs_rows' kinds). Nothing a step reads is a Python object's (values are bound
 * SQLITE_TRANSIENT, copied as Python's are; arrays are exported, so cannot resize), and
 * after it the lists' sizes and the handle are read again.
 */
#define _GNU_SOURCE 1 /* RTLD_DEFAULT (as pyconfig.h defines it) */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "collectors/_accel.h"

#if defined(__linux__) && !defined(PYPY_VERSION) && !defined(Py_GIL_DISABLED) &&              \
    PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define SQLBIND_SUPPORTED 1
#endif

#ifdef SQLBIND_SUPPORTED
#include <dlfcn.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* SQLite's stable C interface, as far as used (no header needed: nothing is linked) */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef long long sqlite3_int64;
typedef void (*sqlite3_destructor)(void *);
#define SQLITE_OK 0
#define SQLITE_ROW 100
#define SQLITE_DONE 101
#define SQLITE_TRANSIENT ((sqlite3_destructor)-1)

static struct api {
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*step)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    int (*bind_parameter_count)(sqlite3_stmt *);
    const char *(*bind_parameter_name)(sqlite3_stmt *, int);
    int (*column_count)(sqlite3_stmt *);
    int (*column_int)(sqlite3_stmt *, int);
    int (*bind_int64)(sqlite3_stmt *, int, sqlite3_int64);
    int (*bind_double)(sqlite3_stmt *, int, double);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, sqlite3_destructor);
    int (*bind_blob)(sqlite3_stmt *, int, const void *, int, sqlite3_destructor);
    int (*bind_null)(sqlite3_stmt *, int);
    int (*changes)(sqlite3 *);
    int (*errcode)(sqlite3 *);
    int (*extended_errcode)(sqlite3 *);
    const char *(*errmsg)(sqlite3 *);
    int (*get_autocommit)(sqlite3 *);
    sqlite3_int64 (*memory_used)(void);
    int (*libversion_number)(void);
} api;

/* each function's name and where its pointer goes in `api` (stored with memcpy: dlsym's
 * void * is not a function pointer's type, POSIX only promises the same representation) */
#define API(name) {"sqlite3_" #name, offsetof(struct api, name)}
static const struct {
    const char *name;
    size_t offset;
} API_TABLE[] = {
    API(prepare_v2), API(step), API(reset), API(finalize), API(bind_parameter_count),
    API(bind_parameter_name), API(column_count), API(column_int), API(bind_int64),
    API(bind_double), API(bind_text), API(bind_blob), API(bind_null), API(changes),
    API(errcode), API(extended_errcode), API(errmsg), API(get_autocommit), API(memory_used),
    API(libversion_number),
};
#undef API
_Static_assert(sizeof(void *) == sizeof api.step, "dlsym's pointers hold functions");
_Static_assert(sizeof API_TABLE / sizeof *API_TABLE == sizeof api / sizeof api.step,
               "every function of api looked up");

/* _sqlite3's Connection: the handle right after the object header (CPython 3.11-3.13) */
typedef struct {
    PyObject_HEAD
    sqlite3 *db;
} connection_head;

static PyObject *SQLITE; /* the _sqlite3 module */
static PyTypeObject *CONNECTION;
static PyTypeObject *ARRAY; /* array.array: the only buffers read (not a subclass's) */
static int verified;     /* 0: not yet, 1: the self-test passed, -1: it failed */

/* the functions, from the instance _sqlite3 calls; -1 (ImportError set) when not found */
static int
resolve(PyObject *sqlite)
{
    PyObject *file = PyObject_GetAttrString(sqlite, "__file__"); /* (none: built in) */
    const char *path = file && PyUnicode_Check(file) ? PyUnicode_AsUTF8(file) : NULL;
    void *lib = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL; /* kept: never closed */
    Py_XDECREF(file);
    if (lib == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "_sqlite3 is not a loaded shared library");
        return -1;
    }
    for (size_t i = 0; i < sizeof API_TABLE / sizeof *API_TABLE; i++) {
        void *f = dlsym(lib, API_TABLE[i].name);
        void *global = dlsym(RTLD_DEFAULT, API_TABLE[i].name);
        if (f == NULL || (global != NULL && global != f)) {
            PyErr_Format(PyExc_ImportError, "%s: %s", API_TABLE[i].name,
                         f ? "another SQLite is in the global scope" : "not found");
            return -1;
        }
        memcpy((char *)&api + API_TABLE[i].offset, &f, sizeof f);
    }
    return 0;
}

/* conn.method(sql) (a Python sqlite3 call), its result dropped; -1 on an error */
static int
run(PyObject *conn, const char *sql)
{
    PyObject *r = PyObject_CallMethod(conn, "execute", "s", sql);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* 1 when `conn`'s handle answers as Python's sqlite3 says it should (see the top) */
static int
self_test(PyObject *conn, sqlite3 *db)
{
    PyObject *info = PyObject_GetAttrString(SQLITE, "sqlite_version");
    const char *text = info && PyUnicode_Check(info) ? PyUnicode_AsUTF8(info) : NULL;
    int major, minor, patch;
    int parsed = text != NULL && sscanf(text, "%d.%d.%d", &major, &minor, &patch) == 3;
    Py_XDECREF(info);
    if (!parsed || api.libversion_number() != major * 1000000 + minor * 1000 + patch)
        return 0;
    sqlite3_int64 before = api.memory_used();
    if (run(conn, "CREATE TABLE probe (b BLOB)") < 0 ||
        run(conn, "INSERT INTO probe VALUES (zeroblob(1048576))") < 0)
        return -1;
    if (api.memory_used() - before < 1048576)
        return 0; /* another SQLite, or one not counting its memory: not provably the same */
    unsigned int mark = (unsigned int)time(NULL) ^ (unsigned int)(uintptr_t)&before;
    int version = (int)(mark & 0x3fffffff) | 1;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", version);
    if (run(conn, sql) < 0)
        return -1;
    sqlite3_stmt *st = NULL;
    int got = -1;
    if (api.prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && st != NULL &&
        api.step(st) == SQLITE_ROW)
        got = api.column_int(st, 0);
    api.finalize(st);
    if (got != version || !api.get_autocommit(db))
        return 0;
    if (run(conn, "BEGIN") < 0)
        return -1;
    PyObject *in_tx = PyObject_GetAttrString(conn, "in_transaction");
    int agrees = in_tx == Py_True && api.get_autocommit(db) == 0;
    Py_XDECREF(in_tx);
    return run(conn, "ROLLBACK") < 0 ? -1 : agrees;
}

/* whether the handles of Connection objects can be used: the self-test, run once; -1
 * with the exception set when something not an Exception (an interrupt) stopped it */
static int
verify(void)
{
    if (verified)
        return verified > 0;
    PyObject *conn = NULL, *connect = PyObject_GetAttrString(SQLITE, "connect");
    PyObject *args = Py_BuildValue("(s)", ":memory:");
    PyObject *kwargs = Py_BuildValue("{sO}", "isolation_level", Py_None);
    if (connect != NULL && args != NULL && kwargs != NULL)
        conn = PyObject_Call(connect, args, kwargs); /* (no BEGIN but the test's own) */
    Py_XDECREF(connect);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    int ok = -1;
    if (conn != NULL && PyObject_TypeCheck(conn, CONNECTION)) {
        sqlite3 *db = ((connection_head *)conn)->db;
        ok = db == NULL ? 0 : self_test(conn, db);
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (conn != NULL) {
        PyObject *r = PyObject_CallMethod(conn, "close", NULL);
        Py_XDECREF(r);
        Py_DECREF(conn);
        PyErr_Clear();
    }
    if (type != NULL && !PyErr_GivenExceptionMatches(type, PyExc_Exception)) {
        PyErr_Restore(type, value, traceback); /* an interrupt, not the test's answer */
        return -1;
    }
    Py_XDECREF(type); /* an error of the test is a failed test: Python's path then */
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    verified = ok > 0 ? 1 : -1;
    return verified > 0;
}

enum kind { LIST, I64, I32, F64 };
enum how { AS_IS, OFFSET, TABLE };

typedef struct {
    enum kind kind;
    PyObject *seq; /* LIST: the list or tuple */
    Py_buffer view; /* arrays: their items */
    enum how how;
    long long offset;
    PyObject *table; /* TABLE: a list or tuple */
} column;

/* value i of a column as an integer index or addend; 0 when it is none (not an int) */
static int
int_at(column *c, Py_ssize_t i, long long *v)
{
    switch (c->kind) {
    case I64:
        *v = ((const long long *)c->view.buf)[i];
        return 1;
    case I32:
        *v = ((const int *)c->view.buf)[i];
        return 1;
    case F64:
        return 0;
    case LIST:
        break;
    }
    if (i >= PySequence_Fast_GET_SIZE(c->seq))
        return 0;
    PyObject *x = PySequence_Fast_GET_ITEM(c->seq, i);
    if (!PyLong_CheckExact(x) && !PyBool_Check(x))
        return 0;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(x, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* bind a value as Python's sqlite3 does (no adapter registered for its type: see
 * sqlbind.py); 0 when this cannot (Python's sqlite3 then binds, or raises) */
static int
bind_object(sqlite3_stmt *st, int pos, PyObject *x)
{
    if (x == Py_None)
        return api.bind_null(st, pos) == SQLITE_OK;
    if (PyLong_CheckExact(x) || PyBool_Check(x)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        return api.bind_int64(st, pos, v) == SQLITE_OK;
    }
    if (PyFloat_CheckExact(x))
        return api.bind_double(st, pos, PyFloat_AS_DOUBLE(x)) == SQLITE_OK;
    if (PyUnicode_CheckExact(x)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(x, &size);
        if (text == NULL || size > INT_MAX) {
            PyErr_Clear();
            return 0;
        }
        return api.bind_text(st, pos, text, (int)size, SQLITE_TRANSIENT) == SQLITE_OK;
    }
    if (PyBytes_CheckExact(x)) {
        if (PyBytes_GET_SIZE(x) > INT_MAX)
            return 0;
        return api.bind_blob(st, pos, PyBytes_AS_STRING(x), (int)PyBytes_GET_SIZE(x),
                             SQLITE_TRANSIENT) == SQLITE_OK;
    }
    return 0;
}

/* bind value i of a column (through its `via`); 0 when this cannot */
static int
bind_at(sqlite3_stmt *st, int pos, column *c, Py_ssize_t i)
{
    long long v;
    switch (c->how) {
    case TABLE: {
        if (!int_at(c, i, &v))
            return 0;
        Py_ssize_t size = PySequence_Fast_GET_SIZE(c->table);
        if (v < 0)
            v += size;
        if (v < 0 || v >= size)
            return 0;
        return bind_object(st, pos, PySequence_Fast_GET_ITEM(c->table, (Py_ssize_t)v));
    }
    case OFFSET:
        if (!int_at(c, i, &v) || __builtin_add_overflow(v, c->offset, &v))
            return 0;
        return api.bind_int64(st, pos, v) == SQLITE_OK;
    case AS_IS:
        break;
    }
    switch (c->kind) {
    case I64:
        return api.bind_int64(st, pos, ((const long long *)c->view.buf)[i]) == SQLITE_OK;
    case I32:
        return api.bind_int64(st, pos, ((const int *)c->view.buf)[i]) == SQLITE_OK;
    case F64:
        return api.bind_double(st, pos, ((const double *)c->view.buf)[i]) == SQLITE_OK;
    case LIST:
        break;
    }
    if (i >= PySequence_Fast_GET_SIZE(c->seq))
        return 0;
    return bind_object(st, pos, PySequence_Fast_GET_ITEM(c->seq, i));
}

/* a column and its via made ready; -1 on an error, 0 when this does not take them (nothing
 * held then), else 1 and its length in *n (an array's buffer held: PyBuffer_Release) */
static int
column_of(column *c, PyObject *col, PyObject *via, Py_ssize_t *n)
{
    if (via == Py_None) {
        c->how = AS_IS;
    } else if (PyLong_CheckExact(via)) { /* (a bool or a subclass: its own __add__, Python's) */
        int overflow;
        c->how = OFFSET;
        c->offset = PyLong_AsLongLongAndOverflow(via, &overflow);
        if (overflow || (c->offset == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
    } else if (PyList_CheckExact(via) || PyTuple_CheckExact(via)) {
        c->how = TABLE;
        c->table = via;
    } else {
        return 0;
    }
    if (PyList_CheckExact(col) || PyTuple_CheckExact(col)) {
        c->kind = LIST;
        c->seq = col;
        *n = PySequence_Fast_GET_SIZE(col);
        return 1;
    }
    if (Py_TYPE(col) != ARRAY) /* (a memoryview's shape and alignment, a subclass's
                                * __iter__: Python's iteration reads what it reads) */
        return 0;
    if (PyObject_GetBuffer(col, &c->view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        PyErr_Clear();
        return 0;
    }
    const char *f = c->view.format;
    c->kind = LIST; /* (not taken: a typecode this does not read) */
    if (c->view.ndim == 1 && f != NULL && f[0] != '\0' && f[1] == '\0') {
        if ((f[0] == 'q' || f[0] == 'l') && c->view.itemsize == 8)
            c->kind = I64;
        else if (f[0] == 'i' && c->view.itemsize == 4)
            c->kind = I32;
        else if (f[0] == 'd' && c->view.itemsize == 8)
            c->kind = F64;
    }
    if (c->kind == LIST) {
        PyBuffer_Release(&c->view);
        return 0;
    }
    *n = c->view.len / c->view.itemsize;
    return 1;
}

/* the exception _pysqlite_seterror raises for the handle's error (after the step failed) */
static void
set_error(sqlite3 *db)
{
    const char *name;
    int code = api.errcode(db);
    switch (code) {
    case 2: case 12: /* INTERNAL, NOTFOUND */
        name = "InternalError";
        break;
    case 7: /* NOMEM */
        PyErr_NoMemory();
        return;
    case 1: case 3: case 4: case 5: case 6: case 8: case 9: case 10: case 13: case 14:
    case 15: case 16: case 17: /* ERROR PERM ABORT BUSY LOCKED READONLY INTERRUPT IOERR
                                * FULL CANTOPEN PROTOCOL EMPTY SCHEMA */
        name = "OperationalError";
        break;
    case 18: /* TOOBIG */
        name = "DataError";
        break;
    case 19: case 20: /* CONSTRAINT, MISMATCH */
        name = "IntegrityError";
        break;
    case 21: case 25: /* MISUSE, RANGE */
        name = "InterfaceError";
        break;
    default: /* CORRUPT, NOTADB, ... */
        name = "DatabaseError";
        break;
    }
    PyObject *cls = PyObject_GetAttrString(SQLITE, name);
    PyObject *exc = cls ? PyObject_CallFunction(cls, "s", api.errmsg(db)) : NULL;
    PyObject *ext = exc ? PyLong_FromLong(api.extended_errcode(db)) : NULL;
    if (ext != NULL && PyObject_SetAttrString(exc, "sqlite_errorcode", ext) == 0)
        PyErr_SetObject(cls, exc);
    Py_XDECREF(ext);
    Py_XDECREF(exc);
    Py_XDECREF(cls);
}

/* whether `sql` is one INSERT statement and nothing after it (else Python's sqlite3 runs) */
static int
one_insert(const char *sql, const char *tail)
{
    while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r')
        sql++;
    if (PyOS_strnicmp(sql, "INSERT", 6) != 0)
        return 0;
    for (; tail != NULL && *tail; tail++)
        if (*tail != ' ' && *tail != '\t' && *tail != '\n' && *tail != '\r')
            return 0;
    return 1;
}

/* rows between two releases of the GIL around a step (see the top) */
#define STEPS_PER_RELEASE 256

/* step every row (the GIL released in some steps: see the top); the rows done, or -1 with
 * the step's error set */
static Py_ssize_t
step_rows(PyObject *conn, sqlite3 *db, sqlite3_stmt *st, column *cols, int ncols,
          Py_ssize_t n, long long *changes)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int j = 0; j < ncols; j++)
            if (!bind_at(st, j + 1, &cols[j], i))
                return i;
        int rc;
        if (i % STEPS_PER_RELEASE == 0) {
            Py_BEGIN_ALLOW_THREADS
            rc = api.step(st);
            Py_END_ALLOW_THREADS
        } else {
            rc = api.step(st);
        }
        if (((connection_head *)conn)->db != db) { /* closed meanwhile (by a callback or
                                                    * another thread): Python's says so */
            if (rc == SQLITE_DONE)
                *changes += api.changes(db); /* (a zombie till the statement's finalized) */
            api.reset(st);
            PyErr_Clear();
            return rc == SQLITE_DONE ? i + 1 : i;
        }
        if (rc != SQLITE_DONE) {
            api.reset(st);
            if (PyErr_Occurred()) /* a Python callback's, which Python's sqlite3 drops too */
                PyErr_Clear();
            set_error(db);
            return -1;
        }
        *changes += api.changes(db);
        api.reset(st);
    }
    return n;
}

/* whether every parameter of `st` is positional (? or ?NNN): named ones Python's sqlite3
 * binds from a sequence only with a DeprecationWarning (3.12 on), so it binds them */
static int
positional(sqlite3_stmt *st)
{
    int count = api.bind_parameter_count(st);
    for (int i = 1; i <= count; i++) {
        const char *name = api.bind_parameter_name(st, i);
        if (name != NULL && name[0] != '?')
            return 0;
    }
    return 1;
}

/* whether a list column's size is no longer `n` (a callback of the steps changed it):
 * the rows from `n` on, if any, are Python's to iterate */
static int
resized(const column *cols, Py_ssize_t ncols, Py_ssize_t n)
{
    for (Py_ssize_t j = 0; j < ncols; j++)
        if (cols[j].kind == LIST && PySequence_Fast_GET_SIZE(cols[j].seq) != n)
            return 1;
    return 0;
}

static PyObject *
insert(PyObject *self, PyObject *args)
{
    PyObject *conn, *sqlobj, *given, *given_vias;
    if (!PyArg_ParseTuple(args, "OUO!O!", &conn, &sqlobj, &PyList_Type, &given, &PyList_Type,
                          &given_vias))
        return NULL;
    if (PyList_GET_SIZE(given_vias) != PyList_GET_SIZE(given)) {
        PyErr_SetString(PyExc_ValueError, "one via per column");
        return NULL;
    }
    /* (tuples: the columns stay alive whatever a callback of SQLite's does to the lists) */
    PyObject *columns = PyList_AsTuple(given), *vias = PyList_AsTuple(given_vias);
    Py_ssize_t ncols = PyList_GET_SIZE(given);
    column *cols = PyMem_Calloc(ncols ? ncols : 1, sizeof(column));
    if (columns == NULL || vias == NULL || cols == NULL) {
        Py_XDECREF(columns);
        Py_XDECREF(vias);
        PyMem_Free(cols);
        return cols == NULL ? PyErr_NoMemory() : NULL;
    }
    long long changes = 0;
    Py_ssize_t done = 0, n = -1;
    int taken = 0, ok = 1, ran = 0;
    for (; taken < ncols; taken++) { /* every column this can read, all of one length */
        Py_ssize_t len = 0;
        int r = column_of(&cols[taken], PyTuple_GET_ITEM(columns, taken),
                          PyTuple_GET_ITEM(vias, taken), &len);
        if (r <= 0) {
            ok = r;
            break;
        }
        if (n >= 0 && len != n) {
            ok = 0;
            taken++;
            break;
        }
        n = len;
    }
    Py_ssize_t size;
    const char *sql = PyUnicode_AsUTF8AndSize(sqlobj, &size);
    if (sql == NULL || (size_t)size != strlen(sql) || size >= INT_MAX) {
        PyErr_Clear(); /* not UTF-8, a NUL in it, too long: Python's sqlite3 says so */
        ok = 0;
    }
    if (ok > 0 && PyObject_TypeCheck(conn, CONNECTION)) {
        sqlite3 *db = ((connection_head *)conn)->db;
        int usable = db != NULL ? verify() : 0;
        if (usable < 0)
            ok = -1;
        db = ((connection_head *)conn)->db; /* (the test ran Python code: read it again) */
        if (usable > 0 && db != NULL) {
            sqlite3_stmt *st = NULL;
            const char *tail = NULL;
            if (api.prepare_v2(db, sql, -1, &st, &tail) == SQLITE_OK && st != NULL &&
                one_insert(sql, tail) && api.column_count(st) == 0 &&
                api.bind_parameter_count(st) == ncols && positional(st)) {
                done = step_rows(conn, db, st, cols, (int)ncols, n < 0 ? 0 : n, &changes);
                ran = done != n || !resized(cols, ncols, n);
            }
            api.finalize(st);
            if (done < 0)
                ok = -1;
        }
    }
    for (int j = 0; j < taken; j++)
        if (cols[j].kind != LIST)
            PyBuffer_Release(&cols[j].view);
    PyMem_Free(cols);
    Py_DECREF(columns);
    Py_DECREF(vias);
    if (ok < 0)
        return NULL;
    if (ran && done == n) /* (not ran: done 0, or all n of a resized column) */
        return Py_BuildValue("(LO)", changes, Py_None);
    return Py_BuildValue("(Ln)", changes, done);
}

static PyMethodDef methods[] = {
    {"insert", insert, METH_VARARGS, "Rows of columns bound to an INSERT (see above)."},
    {NULL, NULL, 0, NULL},
};
ACCEL_MODULE("monitor._sqlbind", "Rows bound to an INSERT and stepped in C.");

/* the module, when SQLite's functions are _sqlite3's own (else ImportError: Python's path) */
PyMODINIT_FUNC
PyInit__sqlbind(void)
{
    SQLITE = PyImport_ImportModule("_sqlite3");
    if (SQLITE == NULL || resolve(SQLITE) < 0)
        return NULL;
    CONNECTION = (PyTypeObject *)PyObject_GetAttrString(SQLITE, "Connection");
    if (CONNECTION == NULL || !PyType_Check(CONNECTION)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "_sqlite3.Connection is not a type");
        return NULL;
    }
    PyObject *arrays = PyImport_ImportModule("array");
    ARRAY = arrays ? (PyTypeObject *)PyObject_GetAttrString(arrays, "array") : NULL;
    Py_XDECREF(arrays);
    if (ARRAY == NULL || !PyType_Check(ARRAY)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "array.array is not a type");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 2) < 0)
        Py_CLEAR(m);
    return m;
}

#else /* not a CPython whose Connection layout is known here, or not Linux: Python's path */

static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};

ACCEL_MODULE("monitor._sqlbind", "Unavailable on this platform.");

PyMODINIT_FUNC
PyInit__sqlbind(void)
{
    PyErr_SetString(PyExc_ImportError, "monitor._sqlbind: not for this Python or platform");
    return NULL;
}

#endif
