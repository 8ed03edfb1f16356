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
 * start(conn, sql, columns, via) -> Steps or None, then Steps.run() -> (changes, stop):
 * insert in two halves, for sqlbind.PendingInsert, whose thread runs the second while the
 * caller's does Python work. start reads every value (with the GIL, in the caller's
 * thread) up to the first row insert would leave to Python; run binds and steps them
 * with the GIL released throughout, and returns or raises as insert does (None from
 * start: insert would leave every row to Python). The rows are those of the columns when
 * start read them (a trigger's callback that changes a list during the steps changes
 * nothing inserted: insert, like executemany, would insert what it finds).
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
 *
 * Each bind and step enters and leaves the connection's mutex (the system SQLite is
 * serialized). Measured, no gain (2026-12-06; 503,250 rows of obs_rows' kinds in runs of
 * 20,000, thread CPU alternated run by run with this code in one process): holding that
 * mutex across 256 rows, or a whole run, saved 0-1 % (SQLite's calls still enter it, on
 * the owner's path) and kept another thread's statements on the connection waiting up to
 * a whole run (sched_yield between holds: 24-128 ms, against 4 ms without holds); not
 * binding a value equal to the row before's saved nothing (the comparisons cost what the
 * binds did).
 *
 * quiet_memory(only_thread) -> bool: SQLite's memory statistics off for the process (each
 * of SQLite's allocations otherwise takes a global mutex to count itself: ~12 % of the
 * store's insert thread's CPU), and whether they are off. SQLite takes that setting only
 * between sqlite3_shutdown and sqlite3_initialize (importing _sqlite3 initializes it), and
 * a shutdown is only for a process with nothing of SQLite's in use: this does it only when
 * SQLite counts no memory in use (so no connection, statement or blob open anywhere in the
 * process), the caller says it is the process's only thread (sqlbind.py: by Python's count
 * and the system's), and the shutdown would lose no process-wide setting: no heap limit (a
 * hard one sets the soft one too; with the statistics off SQLite enforces neither
 * afterwards), "unix" the default VFS, neither sqlite3_temp_directory nor
 * sqlite3_data_directory set. Else it changes nothing and answers whether they were off
 * already.
 *
 * With the statistics off the memory counter proves nothing, so the self-test proves the
 * instance the same another way too: the VFS a connection Python opened uses (its pager's,
 * SQLITE_FCNTL_VFS_POINTER, SQLite 3.15 on) is this instance's default VFS, an object of the
 * library's own; flat counters are taken only where quiet_memory saw the statistics off.
 * (Calling file_control on a handle that might be another instance's is safe only because
 * the version check before it makes both structs one layout.)
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
#define SQLITE_CONFIG_MEMSTATUS 9
#define SQLITE_FCNTL_VFS_POINTER 27
#define SQLITE_NOMEM 7
#define SQLITE_CONSTRAINT 19
#define SQLITE_INDEX_CONSTRAINT_EQ 2
#define SQLITE_STATIC ((sqlite3_destructor)0)
typedef struct sqlite3_vfs sqlite3_vfs;
typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;

/* the virtual table interface (sqlite3.h's layout, stable since 3.7; version 1 modules) */
typedef struct sqlite3_vtab {
    const struct sqlite3_module *pModule;
    int nRef;
    char *zErrMsg;
} sqlite3_vtab;
typedef struct sqlite3_vtab_cursor {
    sqlite3_vtab *pVtab;
} sqlite3_vtab_cursor;
typedef struct sqlite3_index_info {
    int nConstraint;
    struct sqlite3_index_constraint {
        int iColumn;
        unsigned char op;
        unsigned char usable;
        int iTermOffset;
    } *aConstraint;
    int nOrderBy;
    struct sqlite3_index_orderby {
        int iColumn;
        unsigned char desc;
    } *aOrderBy;
    struct sqlite3_index_constraint_usage {
        int argvIndex;
        unsigned char omit;
    } *aConstraintUsage;
    int idxNum;
    char *idxStr;
    int needToFreeIdxStr;
    int orderByConsumed;
    double estimatedCost;
    /* (later fields: not read or written here) */
} sqlite3_index_info;
typedef struct sqlite3_module {
    int iVersion;
    int (*xCreate)(sqlite3 *, void *, int, const char *const *, sqlite3_vtab **, char **);
    int (*xConnect)(sqlite3 *, void *, int, const char *const *, sqlite3_vtab **, char **);
    int (*xBestIndex)(sqlite3_vtab *, sqlite3_index_info *);
    int (*xDisconnect)(sqlite3_vtab *);
    int (*xDestroy)(sqlite3_vtab *);
    int (*xOpen)(sqlite3_vtab *, sqlite3_vtab_cursor **);
    int (*xClose)(sqlite3_vtab_cursor *);
    int (*xFilter)(sqlite3_vtab_cursor *, int, const char *, int, sqlite3_value **);
    int (*xNext)(sqlite3_vtab_cursor *);
    int (*xEof)(sqlite3_vtab_cursor *);
    int (*xColumn)(sqlite3_vtab_cursor *, sqlite3_context *, int);
    int (*xRowid)(sqlite3_vtab_cursor *, sqlite3_int64 *);
    int (*xUpdate)(sqlite3_vtab *, int, sqlite3_value **, sqlite3_int64 *);
    int (*xBegin)(sqlite3_vtab *);
    int (*xSync)(sqlite3_vtab *);
    int (*xCommit)(sqlite3_vtab *);
    int (*xRollback)(sqlite3_vtab *);
    int (*xFindFunction)(sqlite3_vtab *, int, const char *, void **, void **);
    int (*xRename)(sqlite3_vtab *, const char *);
} sqlite3_module;

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
    int (*file_control)(sqlite3 *, const char *, int, void *);
    sqlite3_vfs *(*vfs_find)(const char *);
    int (*shutdown)(void);
    int (*initialize)(void);
    int (*config)(int, ...);
    void *(*malloc)(int);
    void (*free)(void *);
    sqlite3_int64 (*soft_heap_limit64)(sqlite3_int64);
} api;

/* what a whole insert needs besides (see Steps): looked up too, but optional (SQLite 3.20
 * on); any missing: every insert row by row */
static struct whole_api {
    int (*create_module_v2)(sqlite3 *, const char *, const sqlite3_module *, void *,
                            void (*)(void *));
    int (*declare_vtab)(sqlite3 *, const char *);
    int (*bind_pointer)(sqlite3_stmt *, int, void *, const char *, void (*)(void *));
    void *(*value_pointer)(sqlite3_value *, const char *);
    void (*result_int64)(sqlite3_context *, sqlite3_int64);
    void (*result_double)(sqlite3_context *, double);
    void (*result_text)(sqlite3_context *, const char *, int, sqlite3_destructor);
    void (*result_blob)(sqlite3_context *, const void *, int, sqlite3_destructor);
    void (*result_null)(sqlite3_context *);
} whole_api;
static int whole_ok; /* whether every function of whole_api was found */
/* SQLite's sqlite3_temp_directory and sqlite3_data_directory (NULL: not found), which a
 * shutdown would forget (see quiet_memory) */
static char **temp_directory, **data_directory;

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
    API(libversion_number), API(file_control), API(vfs_find), API(shutdown), API(initialize),
    API(config), API(malloc), API(free), API(soft_heap_limit64),
};
#define WHOLE_API(name) {"sqlite3_" #name, offsetof(struct whole_api, name)}
static const struct {
    const char *name;
    size_t offset;
} WHOLE_API_TABLE[] = {
    WHOLE_API(create_module_v2), WHOLE_API(declare_vtab), WHOLE_API(bind_pointer),
    WHOLE_API(value_pointer), WHOLE_API(result_int64), WHOLE_API(result_double),
    WHOLE_API(result_text), WHOLE_API(result_blob), WHOLE_API(result_null),
};
#undef WHOLE_API
_Static_assert(sizeof WHOLE_API_TABLE / sizeof *WHOLE_API_TABLE ==
                   sizeof whole_api / sizeof whole_api.declare_vtab,
               "every function of whole_api looked up");
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
static int statistics_off; /* quiet_memory saw SQLite's memory statistics off (or put them) */

/* function `name` of `lib` stored at `slot` (memcpy: dlsym's void * is not a function
 * pointer's type); NULL, else what is wrong (then nothing stored) */
static const char *
look_up(void *lib, const char *name, void *slot)
{
    void *f = dlsym(lib, name);
    void *global = dlsym(RTLD_DEFAULT, name);
    if (f == NULL)
        return "not found";
    if (global != NULL && global != f)
        return "another SQLite is in the global scope";
    memcpy(slot, &f, sizeof f);
    return NULL;
}

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
        const char *wrong = look_up(lib, API_TABLE[i].name, (char *)&api + API_TABLE[i].offset);
        if (wrong != NULL) {
            PyErr_Format(PyExc_ImportError, "%s: %s", API_TABLE[i].name, wrong);
            return -1;
        }
    }
    temp_directory = dlsym(lib, "sqlite3_temp_directory");
    data_directory = dlsym(lib, "sqlite3_data_directory");
    whole_ok = 1;
    for (size_t i = 0; i < sizeof WHOLE_API_TABLE / sizeof *WHOLE_API_TABLE; i++)
        if (look_up(lib, WHOLE_API_TABLE[i].name,
                    (char *)&whole_api + WHOLE_API_TABLE[i].offset) != NULL)
            whole_ok = 0;
    return 0;
}

/* conn.execute(sql) (a Python sqlite3 call), its result dropped; -1 on an error */
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
    sqlite3_int64 after = api.memory_used();
    if ((before != 0 || after != 0 || !statistics_off) && after - before < 1048576)
        return 0; /* counted by another SQLite, or flat where quiet_memory saw them counted */
    sqlite3_vfs *its = NULL; /* (both flat at 0: statistics off, see quiet_memory) */
    if (api.file_control(db, "main", SQLITE_FCNTL_VFS_POINTER, &its) != SQLITE_OK ||
        its == NULL || its != api.vfs_find(NULL))
        return 0; /* another SQLite's VFS: not the same */
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

/* a value as bound: read from Python's objects first (value_of, value_at), bound later
 * (bind_value), with the GIL released when Steps.run binds it: a text or blob points into
 * an object kept alive (and unchanged: str and bytes are immutable) until then */
enum vtype { V_NULL, V_INT, V_FLOAT, V_TEXT, V_BLOB };
typedef struct {
    enum vtype type;
    int size; /* V_TEXT, V_BLOB */
    union {
        long long i;
        double d;
        const char *p;
    } u;
} value;

/* a value as Python's sqlite3 binds it (no adapter registered for its type: see
 * sqlbind.py); 0 when this cannot take it (Python's sqlite3 then binds, or raises) */
static int
value_of(PyObject *x, value *v)
{
    if (x == Py_None) {
        v->type = V_NULL;
        return 1;
    }
    if (PyLong_CheckExact(x) || PyBool_Check(x)) {
        int overflow;
        v->u.i = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow || (v->u.i == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        v->type = V_INT;
        return 1;
    }
    if (PyFloat_CheckExact(x)) {
        v->type = V_FLOAT;
        v->u.d = PyFloat_AS_DOUBLE(x);
        return 1;
    }
    if (PyUnicode_CheckExact(x)) {
        Py_ssize_t size;
        v->u.p = PyUnicode_AsUTF8AndSize(x, &size); /* (kept by the str) */
        if (v->u.p == NULL || size > INT_MAX) {
            PyErr_Clear();
            return 0;
        }
        v->type = V_TEXT;
        v->size = (int)size;
        return 1;
    }
    if (PyBytes_CheckExact(x)) {
        if (PyBytes_GET_SIZE(x) > INT_MAX)
            return 0;
        v->type = V_BLOB;
        v->u.p = PyBytes_AS_STRING(x);
        v->size = (int)PyBytes_GET_SIZE(x);
        return 1;
    }
    return 0;
}

/* value i of a column (through its `via`); 0 when this cannot take it */
static int
value_at(column *c, Py_ssize_t i, value *v)
{
    long long n;
    switch (c->how) {
    case TABLE: {
        if (!int_at(c, i, &n))
            return 0;
        Py_ssize_t size = PySequence_Fast_GET_SIZE(c->table);
        if (n < 0)
            n += size;
        if (n < 0 || n >= size)
            return 0;
        return value_of(PySequence_Fast_GET_ITEM(c->table, (Py_ssize_t)n), v);
    }
    case OFFSET:
        if (!int_at(c, i, &n) || __builtin_add_overflow(n, c->offset, &v->u.i))
            return 0;
        v->type = V_INT;
        return 1;
    case AS_IS:
        break;
    }
    switch (c->kind) {
    case I64:
        v->type = V_INT;
        v->u.i = ((const long long *)c->view.buf)[i];
        return 1;
    case I32:
        v->type = V_INT;
        v->u.i = ((const int *)c->view.buf)[i];
        return 1;
    case F64:
        v->type = V_FLOAT;
        v->u.d = ((const double *)c->view.buf)[i];
        return 1;
    case LIST:
        break;
    }
    if (i >= PySequence_Fast_GET_SIZE(c->seq))
        return 0;
    return value_of(PySequence_Fast_GET_ITEM(c->seq, i), v);
}

/* bind a value (copied: SQLITE_TRANSIENT, as Python's sqlite3 binds); 0 on an error
 * (Python's sqlite3 then binds, or raises). Reads no Python object. */
static int
bind_value(sqlite3_stmt *st, int pos, const value *v)
{
    switch (v->type) {
    case V_NULL:
        return api.bind_null(st, pos) == SQLITE_OK;
    case V_INT:
        return api.bind_int64(st, pos, v->u.i) == SQLITE_OK;
    case V_FLOAT:
        return api.bind_double(st, pos, v->u.d) == SQLITE_OK;
    case V_TEXT:
        return api.bind_text(st, pos, v->u.p, v->size, SQLITE_TRANSIENT) == SQLITE_OK;
    case V_BLOB:
        return api.bind_blob(st, pos, v->u.p, v->size, SQLITE_TRANSIENT) == SQLITE_OK;
    }
    return 0;
}

/* bind value i of a column (through its `via`); 0 when this cannot */
static int
bind_at(sqlite3_stmt *st, int pos, column *c, Py_ssize_t i)
{
    value v;
    return value_at(c, i, &v) && bind_value(st, pos, &v);
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

/* the exception _pysqlite_seterror raises for an error: its code, extended code and
 * message as the handle gave them after the step failed */
static void
raise_error(int code, int extended, const char *message)
{
    const char *name;
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
    PyObject *exc = cls ? PyObject_CallFunction(cls, "s", message) : NULL;
    PyObject *ext = exc ? PyLong_FromLong(extended) : NULL;
    if (ext != NULL && PyObject_SetAttrString(exc, "sqlite_errorcode", ext) == 0)
        PyErr_SetObject(cls, exc);
    Py_XDECREF(ext);
    Py_XDECREF(exc);
    Py_XDECREF(cls);
}

/* the exception _pysqlite_seterror raises for the handle's error (after the step failed) */
static void
set_error(sqlite3 *db)
{
    raise_error(api.errcode(db), api.extended_errcode(db), api.errmsg(db));
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

/* an insert's arguments as read: its columns (column_of: `taken` of them, their buffers
 * held, all `n` long; n -1 with none) and, when this can run it, its statement prepared on
 * the connection's handle (else `st` NULL: the rows are Python's) */
typedef struct {
    PyObject *columns, *vias; /* tuples (the columns stay alive whatever a callback of
                               * SQLite's does to the lists) */
    column *cols;
    Py_ssize_t ncols, n;
    int taken;
    sqlite3 *db;
    sqlite3_stmt *st;
} rows;

/* what rows_of holds let go (the statement finalized); again: nothing */
static void
rows_release(rows *r)
{
    if (r->st != NULL)
        api.finalize(r->st);
    r->st = NULL;
    for (int j = 0; j < r->taken; j++)
        if (r->cols[j].kind != LIST)
            PyBuffer_Release(&r->cols[j].view);
    r->taken = 0;
    PyMem_Free(r->cols);
    r->cols = NULL;
    Py_CLEAR(r->columns);
    Py_CLEAR(r->vias);
}

/* insert's arguments read into `r` (see rows; rows_release it either way); -1 on an error */
static int
rows_of(PyObject *args, PyObject **conn, rows *r)
{
    PyObject *sqlobj, *given, *given_vias;
    memset(r, 0, sizeof *r);
    r->n = -1;
    if (!PyArg_ParseTuple(args, "OUO!O!", conn, &sqlobj, &PyList_Type, &given, &PyList_Type,
                          &given_vias))
        return -1;
    if (PyList_GET_SIZE(given_vias) != PyList_GET_SIZE(given)) {
        PyErr_SetString(PyExc_ValueError, "one via per column");
        return -1;
    }
    r->columns = PyList_AsTuple(given);
    r->vias = PyList_AsTuple(given_vias);
    r->ncols = PyList_GET_SIZE(given);
    r->cols = PyMem_Calloc(r->ncols ? r->ncols : 1, sizeof(column));
    if (r->columns == NULL || r->vias == NULL || r->cols == NULL) {
        if (r->cols == NULL)
            PyErr_NoMemory();
        return -1;
    }
    int ok = 1;
    for (; r->taken < r->ncols; r->taken++) { /* every column this can read, of one length */
        Py_ssize_t len = 0;
        int got = column_of(&r->cols[r->taken], PyTuple_GET_ITEM(r->columns, r->taken),
                            PyTuple_GET_ITEM(r->vias, r->taken), &len);
        if (got <= 0) {
            ok = got;
            break;
        }
        if (r->n >= 0 && len != r->n) {
            ok = 0;
            r->taken++;
            break;
        }
        r->n = len;
    }
    Py_ssize_t size;
    const char *sql = PyUnicode_AsUTF8AndSize(sqlobj, &size);
    if (sql == NULL || (size_t)size != strlen(sql) || size >= INT_MAX) {
        PyErr_Clear(); /* not UTF-8, a NUL in it, too long: Python's sqlite3 says so */
        ok = 0;
    }
    if (ok <= 0 || !PyObject_TypeCheck(*conn, CONNECTION))
        return ok;
    sqlite3 *db = ((connection_head *)*conn)->db;
    int usable = db != NULL ? verify() : 0;
    if (usable < 0)
        return -1;
    db = ((connection_head *)*conn)->db; /* (the test ran Python code: read it again) */
    if (usable > 0 && db != NULL) {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        if (api.prepare_v2(db, sql, -1, &st, &tail) == SQLITE_OK && st != NULL &&
            one_insert(sql, tail) && api.column_count(st) == 0 &&
            api.bind_parameter_count(st) == r->ncols && positional(st)) {
            r->db = db;
            r->st = st;
        } else {
            api.finalize(st);
        }
    }
    return 0;
}

static PyObject *
insert(PyObject *self, PyObject *args)
{
    PyObject *conn;
    rows r;
    long long changes = 0;
    Py_ssize_t done = 0, n;
    int ran = 0;
    if (rows_of(args, &conn, &r) < 0) {
        rows_release(&r);
        return NULL;
    }
    n = r.n;
    if (r.st != NULL) {
        done = step_rows(conn, r.db, r.st, r.cols, (int)r.ncols, n < 0 ? 0 : n, &changes);
        ran = done != n || !resized(r.cols, r.ncols, n);
    }
    rows_release(&r);
    if (done < 0)
        return NULL;
    if (ran && done == n) /* (not ran: done 0, or all n of a resized column) */
        return Py_BuildValue("(LO)", changes, Py_None);
    return Py_BuildValue("(Ln)", changes, done);
}

/* A whole insert's rows, as the one table its statement reads gives them (see Steps): the
 * eponymous-only virtual table WHOLE_TABLE, registered on a connection at its first whole
 * insert (nothing is written to the database), whose hidden column `rows` takes the
 * values read (a pointer bound as WHOLE_TABLE's: sqlite3_bind_pointer) and whose columns
 * c0, c1... give each row's values in order, as bind_value binds them (texts and blobs not
 * copied: they stay alive and unchanged until the step ends). One statement then inserts
 * all of them: SQLite opens its cursors, checks the schema, begins and ends a statement
 * once, not once a row (an insert of obs_rows' kinds: a third fewer instructions); its
 * caller makes it INSERT OR FAIL, which ends at a failing row as executemany does and
 * needs no statement journal (see sqlbind.PendingInsert), for a table without triggers: a
 * trigger's own failure, or its rows for a failing row, are undone with the row's statement
 * by executemany, not by OR FAIL (the store's tables have none). */
#define WHOLE_TABLE "apiwatch_rows"
#define WHOLE_COLUMNS 32
#define WHOLE_SCHEMA                                                                           \
    "CREATE TABLE x(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, "     \
    "c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29, c30, c31, "          \
    "rows HIDDEN)"

typedef struct {
    const value *values; /* count rows of ncols values */
    Py_ssize_t count;
    int ncols;
} whole_rows;

typedef struct {
    sqlite3_vtab_cursor base;
    const whole_rows *rows; /* (NULL: none given) */
    Py_ssize_t i;
} whole_cursor;

/* `size` zeroed bytes from SQLite's allocator (what it frees: vtabs, cursors), or NULL */
static void *
zeroed(size_t size)
{
    void *p = api.malloc((int)size);
    if (p != NULL)
        memset(p, 0, size);
    return p;
}

static int
whole_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **vtab,
              char **err)
{
    int rc = whole_api.declare_vtab(db, WHOLE_SCHEMA);
    if (rc != SQLITE_OK)
        return rc;
    *vtab = zeroed(sizeof **vtab);
    return *vtab == NULL ? SQLITE_NOMEM : SQLITE_OK;
}

static int
whole_disconnect(sqlite3_vtab *t)
{
    api.free(t);
    return SQLITE_OK;
}

/* only read with its rows given (an equality on the hidden column): else no plan */
static int
whole_best_index(sqlite3_vtab *t, sqlite3_index_info *info)
{
    for (int i = 0; i < info->nConstraint; i++) {
        if (info->aConstraint[i].iColumn == WHOLE_COLUMNS &&
            info->aConstraint[i].op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!info->aConstraint[i].usable)
                return SQLITE_CONSTRAINT;
            info->aConstraintUsage[i].argvIndex = 1;
            info->aConstraintUsage[i].omit = 1;
            info->estimatedCost = 1.0;
            return SQLITE_OK;
        }
    }
    return SQLITE_CONSTRAINT;
}

static int
whole_open(sqlite3_vtab *t, sqlite3_vtab_cursor **cursor)
{
    whole_cursor *c = zeroed(sizeof *c);
    *cursor = c == NULL ? NULL : &c->base;
    return c == NULL ? SQLITE_NOMEM : SQLITE_OK;
}

static int
whole_close(sqlite3_vtab_cursor *c)
{
    api.free(c);
    return SQLITE_OK;
}

static int
whole_filter(sqlite3_vtab_cursor *cursor, int idx, const char *idx_str, int argc,
             sqlite3_value **argv)
{
    whole_cursor *c = (whole_cursor *)cursor;
    c->rows = argc == 1 ? whole_api.value_pointer(argv[0], WHOLE_TABLE) : NULL;
    c->i = 0;
    return SQLITE_OK;
}

static int
whole_next(sqlite3_vtab_cursor *cursor)
{
    ((whole_cursor *)cursor)->i++;
    return SQLITE_OK;
}

static int
whole_eof(sqlite3_vtab_cursor *cursor)
{
    whole_cursor *c = (whole_cursor *)cursor;
    return c->rows == NULL || c->i >= c->rows->count;
}

static int
whole_column(sqlite3_vtab_cursor *cursor, sqlite3_context *ctx, int k)
{
    whole_cursor *c = (whole_cursor *)cursor;
    if (k < 0 || k >= c->rows->ncols) { /* (a column past the rows': none) */
        whole_api.result_null(ctx);
        return SQLITE_OK;
    }
    const value *v = &c->rows->values[c->i * c->rows->ncols + k];
    switch (v->type) {
    case V_NULL:
        whole_api.result_null(ctx);
        break;
    case V_INT:
        whole_api.result_int64(ctx, v->u.i);
        break;
    case V_FLOAT:
        whole_api.result_double(ctx, v->u.d);
        break;
    case V_TEXT:
        whole_api.result_text(ctx, v->u.p, v->size, SQLITE_STATIC);
        break;
    case V_BLOB:
        whole_api.result_blob(ctx, v->u.p, v->size, SQLITE_STATIC);
        break;
    }
    return SQLITE_OK;
}

static int
whole_rowid(sqlite3_vtab_cursor *cursor, sqlite3_int64 *rowid)
{
    *rowid = ((whole_cursor *)cursor)->i;
    return SQLITE_OK;
}

static const sqlite3_module whole_module = {
    .iVersion = 1,
    .xCreate = NULL, /* eponymous only: never in a schema */
    .xConnect = whole_connect,
    .xBestIndex = whole_best_index,
    .xDisconnect = whole_disconnect,
    .xDestroy = whole_disconnect,
    .xOpen = whole_open,
    .xClose = whole_close,
    .xFilter = whole_filter,
    .xNext = whole_next,
    .xEof = whole_eof,
    .xColumn = whole_column,
    .xRowid = whole_rowid,
};

/* `sql` (an INSERT reading its rows from WHOLE_TABLE) prepared on `db`, WHOLE_TABLE
 * registered on it first if need be; NULL when it cannot be (the rows then go one by one) */
static sqlite3_stmt *
whole_statement(sqlite3 *db, const char *sql, int ncols)
{
    if (!whole_ok || ncols > WHOLE_COLUMNS)
        return NULL;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    if (api.prepare_v2(db, sql, -1, &st, &tail) != SQLITE_OK) {
        api.finalize(st);
        st = NULL;
        if (whole_api.create_module_v2(db, WHOLE_TABLE, &whole_module, NULL, NULL) != SQLITE_OK ||
            api.prepare_v2(db, sql, -1, &st, &tail) != SQLITE_OK) {
            api.finalize(st);
            return NULL;
        }
    }
    if (st == NULL || !one_insert(sql, tail) || api.column_count(st) != 0 ||
        api.bind_parameter_count(st) != 1) {
        api.finalize(st);
        return NULL;
    }
    return st;
}

/* start(conn, sql, columns, via) -> Steps, or None: insert's rows read now (with the GIL),
 * to be stepped by Steps.run, which releases the GIL for all of them: another thread runs
 * it while this one does other work (sqlbind.PendingInsert). Each value is read as insert
 * binds it, up to the first row this cannot bind (the rows from there are Python's, as
 * insert leaves them); the lists read are copied first (tuples: a text bound points into a
 * str they keep), arrays read at once (released: not held till the steps). None when
 * insert would leave every row to Python (stop 0): the caller calls insert_columns. */
typedef struct {
    PyObject_HEAD
    PyObject *conn;
    rows r;            /* the statement (the arrays' buffers already released) */
    PyObject *kept;    /* the copies of the lists read */
    value *values;     /* `count` rows of r.ncols values */
    Py_ssize_t count;
    int ran;
    sqlite3_stmt *whole; /* the rows' statement as one (see whole_rows), or NULL */
    whole_rows given;    /* what it reads */
} Steps;

static PyTypeObject StepsType;

static void
Steps_dealloc(Steps *s)
{
    rows_release(&s->r); /* (a Steps never run: its statement finalized, nothing stepped) */
    if (s->whole != NULL)
        api.finalize(s->whole);
    PyMem_Free(s->values);
    Py_XDECREF(s->kept);
    Py_XDECREF(s->conn);
    PyObject_Free(s);
}

/* a list read copied into `kept` (*seq then the copy); -1 on an error */
static int
keep_copy(PyObject *kept, PyObject **seq)
{
    PyObject *copy = PySequence_Tuple(*seq);
    if (copy == NULL || PyList_Append(kept, copy) < 0) {
        Py_XDECREF(copy);
        return -1;
    }
    Py_DECREF(copy); /* (kept's) */
    *seq = copy;
    return 0;
}

static PyObject *
start(PyObject *self, PyObject *args)
{
    PyObject *conn, *whole_sql = Py_None;
    rows r;
    Py_ssize_t given = PyTuple_GET_SIZE(args);
    if (given == 5) { /* (whole_sql: see Steps) */
        whole_sql = PyTuple_GET_ITEM(args, 4);
        if (whole_sql != Py_None && !PyUnicode_Check(whole_sql)) {
            PyErr_SetString(PyExc_TypeError, "start: whole_sql is a str or None");
            return NULL;
        }
    }
    PyObject *four = given == 5 ? PyTuple_GetSlice(args, 0, 4) : Py_NewRef(args);
    if (four == NULL)
        return NULL;
    int got = rows_of(four, &conn, &r);
    Py_DECREF(four);
    if (got < 0 || r.st == NULL) {
        rows_release(&r);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Steps *s = PyObject_New(Steps, &StepsType);
    if (s == NULL) {
        rows_release(&r);
        return NULL;
    }
    s->conn = Py_NewRef(conn);
    s->r = r;
    s->values = NULL;
    s->count = 0;
    s->ran = 0;
    s->whole = NULL;
    if (whole_sql != Py_None) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(whole_sql, &size);
        if (text == NULL || (size_t)size != strlen(text))
            PyErr_Clear(); /* (not UTF-8, a NUL in it: row by row) */
        else
            s->whole = whole_statement(r.db, text, (int)r.ncols);
    }
    s->kept = PyList_New(0);
    Py_ssize_t n = r.n < 0 ? 0 : r.n, ncols = r.ncols;
    if (s->kept == NULL)
        goto error;
    if (ncols && n > PY_SSIZE_T_MAX / ncols / (Py_ssize_t)sizeof(value)) {
        PyErr_NoMemory();
        goto error;
    }
    s->values = PyMem_Malloc((n * ncols > 0 ? (size_t)(n * ncols) : 1) * sizeof(value));
    if (s->values == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t j = 0; j < ncols; j++) {
        column *c = &s->r.cols[j];
        if ((c->kind == LIST && keep_copy(s->kept, &c->seq) < 0) ||
            (c->how == TABLE && keep_copy(s->kept, &c->table) < 0))
            goto error;
    }
    for (; s->count < n; s->count++)
        for (Py_ssize_t j = 0; j < ncols; j++)
            if (!value_at(&s->r.cols[j], s->count, &s->values[s->count * ncols + j]))
                goto read;
read:
    for (int j = 0; j < s->r.taken; j++) /* (their values read) */
        if (s->r.cols[j].kind != LIST)
            PyBuffer_Release(&s->r.cols[j].view);
    s->r.taken = 0;
    return (PyObject *)s;
error:
    Py_DECREF(s);
    return NULL;
}

/* the handle's error after a failed step: its codes, and a copy of its message (NULL when
 * out of memory; PyMem_RawFree it), read without the GIL */
static char *
error_of(sqlite3 *db, int *code, int *extended)
{
    *code = api.errcode(db);
    *extended = api.extended_errcode(db);
    const char *text = api.errmsg(db);
    size_t size = strlen(text) + 1;
    char *message = PyMem_RawMalloc(size);
    if (message != NULL)
        memcpy(message, text, size);
    return message;
}

/* Steps.run() -> (changes, stop), as insert returns them, or the step's error raised as
 * insert raises it; once. The rows are bound and stepped with the GIL released (no Python
 * object is read: the values were), the statement finalized after. */
static PyObject *
Steps_run(Steps *s, PyObject *Py_UNUSED(ignored))
{
    if (s->ran || s->r.st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Steps.run: run already");
        return NULL;
    }
    s->ran = 1;
    sqlite3 *db = s->r.db;
    sqlite3_stmt *st = s->r.st;
    const value *values = s->values;
    int ncols = (int)s->r.ncols;
    long long changes = 0;
    Py_ssize_t done = 0, count = s->count;
    int rc = SQLITE_DONE, code = 0, extended = 0;
    char *message = NULL; /* the error's, read here: the handle's may change once the GIL
                           * is back (a statement finalized by the caller's thread) */
    s->given = (whole_rows){values, count, ncols};
    Py_BEGIN_ALLOW_THREADS
    if (s->whole != NULL && count > 0) { /* one statement for all (see whole_rows) */
        rc = whole_api.bind_pointer(s->whole, 1, &s->given, WHOLE_TABLE, NULL);
        if (rc == SQLITE_OK)
            rc = api.step(s->whole);
        if (rc == SQLITE_DONE) {
            changes = api.changes(db);
            done = count;
        }
        api.reset(s->whole);
        if (rc != SQLITE_DONE)
            message = error_of(db, &code, &extended);
    }
    for (; s->whole == NULL && done < count; done++) {
        int bound = 1;
        for (int j = 0; j < ncols && bound; j++)
            bound = bind_value(st, j + 1, &values[done * ncols + j]);
        if (!bound)
            break; /* (Python's sqlite3 binds it, or raises) */
        rc = api.step(st);
        if (rc == SQLITE_DONE)
            changes += api.changes(db);
        api.reset(st); /* (after an error: its code and message stay the handle's) */
        if (rc != SQLITE_DONE) {
            message = error_of(db, &code, &extended);
            break;
        }
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (((connection_head *)s->conn)->db != db) { /* closed meanwhile: Python's says so */
        PyErr_Clear();
        result = Py_BuildValue("(Ln)", changes, done);
    } else if (rc != SQLITE_DONE) {
        if (PyErr_Occurred()) /* a Python callback's, which Python's sqlite3 drops too */
            PyErr_Clear();
        if (message == NULL)
            PyErr_NoMemory();
        else
            raise_error(code, extended, message);
    } else if (done == s->r.n) {
        result = Py_BuildValue("(LO)", changes, Py_None);
    } else {
        result = Py_BuildValue("(Ln)", changes, done);
    }
    PyMem_RawFree(message);
    rows_release(&s->r);
    if (s->whole != NULL)
        api.finalize(s->whole);
    s->whole = NULL;
    PyMem_Free(s->values);
    s->values = NULL;
    Py_CLEAR(s->kept);
    return result;
}

static PyMethodDef Steps_methods[] = {
    {"run", (PyCFunction)Steps_run, METH_NOARGS, "Step the rows read (see start)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StepsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "monitor._sqlbind.Steps",
    .tp_basicsize = sizeof(Steps),
    .tp_dealloc = (destructor)Steps_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An insert's rows read, to be stepped (see start).",
    .tp_methods = Steps_methods,
};

/* see the top; `only_thread` is the caller's word that no other thread runs */
static PyObject *
quiet_memory(PyObject *self, PyObject *only_thread)
{
    int alone = PyObject_IsTrue(only_thread);
    if (alone < 0)
        return NULL;
    if (api.memory_used() != 0) /* something of SQLite's in use: counted, so counting */
        Py_RETURN_FALSE;
    void *probe = api.malloc(64);
    if (probe == NULL)
        return PyErr_NoMemory();
    int counting = api.memory_used() != 0;
    api.free(probe);
    if (!counting) {
        statistics_off = 1;
        Py_RETURN_TRUE; /* off already */
    }
    /* what a shutdown would lose: a heap limit (a hard one sets the soft one too), another
     * default VFS, the temporary or data directory set; else only what holds counted
     * memory (auto-extensions), ruled out above */
    if (!alone || api.soft_heap_limit64(-1) != 0 || api.vfs_find(NULL) != api.vfs_find("unix") ||
        temp_directory == NULL || *temp_directory != NULL || data_directory == NULL ||
        *data_directory != NULL)
        Py_RETURN_FALSE;
    /* nothing in use, one thread: SQLite may be shut down; it is initialized again at once
     * (whatever the setting's answer: an older SQLite may not know it) */
    int rc = api.shutdown();
    int set = rc == SQLITE_OK ? api.config(SQLITE_CONFIG_MEMSTATUS, 0) : rc;
    if (rc == SQLITE_OK && api.initialize() != SQLITE_OK)
        Py_RETURN_FALSE; /* (its next sqlite3_open initializes it, or says why not) */
    statistics_off = set == SQLITE_OK;
    return PyBool_FromLong(statistics_off);
}

static PyMethodDef methods[] = {
    {"quiet_memory", quiet_memory, METH_O, "SQLite's memory statistics off (see above)."},
    {"insert", insert, METH_VARARGS, "Rows of columns bound to an INSERT (see above)."},
    {"start", start, METH_VARARGS, "Rows of columns read, to be stepped (see above)."},
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
    if (PyType_Ready(&StepsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 5) < 0)
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
