/* A producer's per-batch work of monitor/batch.py (Batch.made, rollup_of), and the storing
 * process's sums of a batch's deltas (store.py _add_batch_deltas) and of the batches'
 * roll-up rows (batch.py RollupSums: the Sums type), in C (see monitor/accel.py).
 *
 * group_tally(raised, ts, out, in_, ctx, blocked) -> tuple | None
 * (and stream_refs, a producer's per sent batch; merge_deltas, link_pairs, link_packs, merged_new
 * and known_in, the storing process's: see there)
 *
 * What Batch.made's grouping and _tally(..., "i") do for the rows of a batch: `raised` the
 * incident rows of each row (a list or tuple of dicts, shared by the rows of one memo key;
 * None or empty: none), `ts`, `out` and `in_` the rows' timestamp, bytes_out and bytes_in
 * columns, `ctx` each row's context index and `blocked` (bytes) per context 1 when its
 * outcome is blocked, else 0. Rows are grouped by the identity of their incident rows, in
 * order of first appearance; per incident (by its "id"), in order of first appearance in
 * the groups, what its rows add (see batch.py Deltas). Returns the tuple
 *   (groups, ids, incs, count, blocked, bytes_out, bytes_in, first, last, evidence, facts,
 *    merges, of, row)
 * with groups a list of (incident rows, row indexes), facts the "facts" of each incident's
 * first incident row (None when it has none), merges the (incident index, facts) of every
 * later incident row of an incident whose facts are not that first one's object (the
 * caller merges them in that order, as _tally does), and of/row the (incident, row) pairs
 * as bytes of native ints (array "i"). Anything this does not handle exactly as the Python
 * code would (a column neither a list nor an array of its typecode, a timestamp that is
 * not a float or is NaN, a size that is not an int or whose sum leaves 64 bits, incident
 * rows that are not dicts or whose id is not a str, one incident twice in one row's
 * incident rows, ...) makes it return None: the Python code then does the work, and
 * raises what it raises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "collectors/_accel.h"

#define EVIDENCE 5 /* batch.py EVIDENCE_SAMPLES */

static PyObject *ID_KEY, *FACTS_KEY;

typedef struct {
    Py_ssize_t count, blocked;
    int64_t out, in;
    int has_out, has_in;
    Py_ssize_t first, last; /* rows whose ts object is the first/last */
    Py_ssize_t nev;
    Py_ssize_t ev[EVIDENCE];
    PyObject *facts; /* borrowed: the first incident row's truthy facts, or NULL */
} Incident;

/* an exact int within 64 bits into *v: 1, else 0 */
static int
int64_of(PyObject *x, int64_t *v)
{
    if (!PyLong_CheckExact(x))
        return 0;
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(x, &overflow);
    if (overflow || (value == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *v = (int64_t)value;
    return 1;
}

/* a column of exact ints or None into v (has: 1 for an int); 0 when it is not one */
static int
sizes_of(PyObject *col, Py_ssize_t n, int64_t *v, char *has)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyList_GET_ITEM(col, i);
        if (x == Py_None) {
            v[i] = 0;
            has[i] = 0;
            continue;
        }
        if (!int64_of(x, &v[i]))
            return 0;
        has[i] = 1;
    }
    return 1;
}

/* a column that is no list as the buffer of n items of `format` ("d": doubles, "q": int64,
 * "i": ints, as an array of that typecode: batch.py _typed, Batch.made) in *view; 0
 * (nothing to release) when it is not one */
static int
column_view(PyObject *col, const char *format, Py_ssize_t n, Py_buffer *view)
{
    Py_ssize_t itemsize = format[0] == 'i' ? (Py_ssize_t)sizeof(int) : 8;
    if (PyList_Check(col) || !PyObject_CheckBuffer(col))
        return 0;
    if (PyObject_GetBuffer(col, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (view->itemsize != itemsize || view->format == NULL || strcmp(view->format, format) != 0 ||
        view->len != n * itemsize) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* a column of exact ints or None (a list), or of int64 (see column_view), into v (has: 1
 * for an int); 0 when it is neither */
static int
sizes_in(PyObject *col, Py_ssize_t n, int64_t *v, char *has)
{
    if (PyList_CheckExact(col))
        return PyList_GET_SIZE(col) == n && sizes_of(col, n, v, has);
    Py_buffer view;
    if (!column_view(col, "q", n, &view))
        return 0;
    memcpy(v, view.buf, n * sizeof(int64_t));
    memset(has, 1, n);
    PyBuffer_Release(&view);
    return 1;
}

/* a column of indexes (a list of exact ints, or an array of ints) into v; 0 when it is
 * neither (or an int beyond Py_ssize_t) */
static int
indexes_in(PyObject *col, Py_ssize_t n, Py_ssize_t *v)
{
    if (PyList_CheckExact(col)) {
        if (PyList_GET_SIZE(col) != n)
            return 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *x = PyList_GET_ITEM(col, i);
            v[i] = PyLong_CheckExact(x) ? PyLong_AsSsize_t(x) : -1;
            if (v[i] == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            if (!PyLong_CheckExact(x))
                return 0;
        }
        return 1;
    }
    Py_buffer view;
    if (!column_view(col, "i", n, &view))
        return 0;
    const int *w = view.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        v[i] = w[i];
    PyBuffer_Release(&view);
    return 1;
}

/* the truthiness of an incident row's facts: 1 a non-empty dict, 0 none or empty, -1 other */
static int
facts_truth(PyObject *facts)
{
    if (facts == NULL || facts == Py_None)
        return 0;
    if (PyDict_CheckExact(facts))
        return PyDict_GET_SIZE(facts) > 0;
    return -1;
}

static inline size_t
slot_of(const void *p, size_t mask)
{
    return (size_t)(((uintptr_t)p >> 4) * (uintptr_t)0x9E3779B97F4A7C15ULL) & mask;
}

static PyObject *
group_tally(PyObject *self, PyObject *args)
{
    PyObject *raised, *ts, *out, *in, *ctx;
    Py_buffer blocked;
    if (!PyArg_ParseTuple(args, "OOOOOy*:group_tally", &raised, &ts, &out, &in, &ctx, &blocked))
        return NULL;
    PyObject *result = NULL, *index = NULL, *groups = NULL, *ids = NULL, *incs = NULL;
    PyObject *merges = NULL;
    double *tsv = NULL;
    int64_t *outv = NULL, *inv = NULL;
    char *has_out = NULL, *has_in = NULL;
    Py_ssize_t *group_of = NULL, *firsts = NULL, *sizes = NULL, *starts = NULL, *order = NULL;
    Py_ssize_t *unit_k = NULL, *ctxv = NULL;
    const void **keys = NULL;
    Py_ssize_t *vals = NULL;
    Incident *inc = NULL;
    int *of = NULL, *rowv = NULL;
    const unsigned char *blocking = blocked.buf;
    int fallback = 0;

    if (!PyList_CheckExact(raised)) {
        fallback = 1;
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(raised);
    int ts_list = PyList_CheckExact(ts); /* else the doubles of an array */
    if ((ts_list && PyList_GET_SIZE(ts) != n) || n >= INT32_MAX) {
        fallback = 1;
        goto done;
    }
    Py_ssize_t m = n > 0 ? n : 1;
    tsv = PyMem_Malloc(m * sizeof(double));
    outv = PyMem_Malloc(m * sizeof(int64_t));
    inv = PyMem_Malloc(m * sizeof(int64_t));
    has_out = PyMem_Malloc(m);
    has_in = PyMem_Malloc(m);
    group_of = PyMem_Malloc(m * sizeof(Py_ssize_t));
    firsts = PyMem_Malloc(m * sizeof(Py_ssize_t));
    order = PyMem_Malloc(m * sizeof(Py_ssize_t));
    ctxv = PyMem_Malloc(m * sizeof(Py_ssize_t));
    size_t cap = 8;
    while (cap < 2 * (size_t)m)
        cap <<= 1;
    keys = PyMem_Calloc(cap, sizeof(void *));
    vals = PyMem_Malloc(cap * sizeof(Py_ssize_t));
    if (tsv == NULL || outv == NULL || inv == NULL || has_out == NULL || has_in == NULL ||
        group_of == NULL || firsts == NULL || order == NULL || ctxv == NULL || keys == NULL ||
        vals == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_buffer view;
    if (!indexes_in(ctx, n, ctxv)) {
        fallback = 1;
        goto done;
    }
    if (!ts_list) {
        if (!column_view(ts, "d", n, &view)) {
            fallback = 1;
            goto done;
        }
        memcpy(tsv, view.buf, n * sizeof(double));
        PyBuffer_Release(&view);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = ts_list ? PyList_GET_ITEM(ts, i) : NULL;
        if (t != NULL && !PyFloat_CheckExact(t)) {
            fallback = 1;
            goto done;
        }
        if (t != NULL)
            tsv[i] = PyFloat_AS_DOUBLE(t);
        if (isnan(tsv[i])) {
            fallback = 1;
            goto done;
        }
        if (ctxv[i] < 0 || ctxv[i] >= blocked.len) {
            fallback = 1;
            goto done;
        }
    }
    if (!sizes_in(out, n, outv, has_out) || !sizes_in(in, n, inv, has_in)) {
        fallback = 1;
        goto done;
    }

    /* groups: rows by the identity of their incident rows, in order of first appearance */
    Py_ssize_t ngroups = 0, units = 0;
    size_t mask = cap - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(raised, i);
        group_of[i] = -1;
        if (r == Py_None)
            continue;
        if (!PyList_CheckExact(r) && !PyTuple_CheckExact(r)) {
            fallback = 1;
            goto done;
        }
        if (PySequence_Fast_GET_SIZE(r) == 0)
            continue;
        size_t s = slot_of(r, mask);
        while (keys[s] != NULL && keys[s] != r)
            s = (s + 1) & mask;
        if (keys[s] == NULL) {
            keys[s] = r;
            vals[s] = ngroups;
            firsts[ngroups++] = i;
            units += PySequence_Fast_GET_SIZE(r);
        }
        group_of[i] = vals[s];
    }
    Py_ssize_t g1 = ngroups > 0 ? ngroups : 1;
    sizes = PyMem_Calloc(g1, sizeof(Py_ssize_t));
    starts = PyMem_Malloc(g1 * sizeof(Py_ssize_t));
    unit_k = PyMem_Malloc((units > 0 ? units : 1) * sizeof(Py_ssize_t));
    inc = PyMem_Calloc(units > 0 ? units : 1, sizeof(Incident));
    if (sizes == NULL || starts == NULL || unit_k == NULL || inc == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (group_of[i] >= 0)
            sizes[group_of[i]]++;
    Py_ssize_t grouped = 0;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        starts[g] = grouped;
        grouped += sizes[g];
    }
    for (Py_ssize_t g = 0; g < ngroups; g++)
        sizes[g] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t g = group_of[i];
        if (g >= 0)
            order[starts[g] + sizes[g]++] = i;
    }

    /* incidents: per group, per incident row of it, in order */
    Py_ssize_t pairs = 0;
    for (Py_ssize_t g = 0; g < ngroups; g++)
        pairs += sizes[g] * PySequence_Fast_GET_SIZE(PyList_GET_ITEM(raised, firsts[g]));
    of = PyMem_Malloc((pairs > 0 ? pairs : 1) * sizeof(int));
    rowv = PyMem_Malloc((pairs > 0 ? pairs : 1) * sizeof(int));
    index = PyDict_New();
    ids = PyList_New(0);
    incs = PyList_New(0);
    merges = PyList_New(0);
    if (of == NULL || rowv == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (index == NULL || ids == NULL || incs == NULL || merges == NULL)
        goto done;
    Py_ssize_t nk = 0, u = 0, p = 0;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *r = PyList_GET_ITEM(raised, firsts[g]);
        Py_ssize_t width = PySequence_Fast_GET_SIZE(r), size = sizes[g];
        const Py_ssize_t *rows = order + starts[g];
        for (Py_ssize_t j = 0; j < width; j++, u++) {
            PyObject *row = PySequence_Fast_GET_ITEM(r, j);
            if (!PyDict_CheckExact(row)) {
                fallback = 1;
                goto done;
            }
            PyObject *iid = PyDict_GetItemWithError(row, ID_KEY);
            PyObject *facts = iid == NULL ? NULL : PyDict_GetItemWithError(row, FACTS_KEY);
            if (PyErr_Occurred() || iid == NULL || !PyUnicode_CheckExact(iid)) {
                /* (an id of another type might run Python code when hashed or compared) */
                PyErr_Clear();
                fallback = 1;
                goto done;
            }
            int truthy = facts_truth(facts);
            if (truthy < 0) {
                fallback = 1;
                goto done;
            }
            PyObject *found = PyDict_GetItemWithError(index, iid);
            if (found == NULL && PyErr_Occurred()) { /* unhashable */
                PyErr_Clear();
                fallback = 1;
                goto done;
            }
            Py_ssize_t k;
            Incident *d;
            if (found == NULL) {
                k = nk++;
                PyObject *number = PyLong_FromSsize_t(k);
                int failed = number == NULL || PyDict_SetItem(index, iid, number) < 0 ||
                             PyList_Append(ids, iid) < 0 || PyList_Append(incs, row) < 0;
                Py_XDECREF(number);
                if (failed)
                    goto done;
                d = &inc[k];
                d->first = d->last = rows[0];
                d->facts = truthy ? facts : NULL;
            } else {
                k = PyLong_AsSsize_t(found);
                for (Py_ssize_t v = u - j; v < u; v++)
                    if (unit_k[v] == k) { /* one incident twice in one row's: Python's */
                        fallback = 1;
                        goto done;
                    }
                d = &inc[k];
                if (truthy && facts != d->facts) {
                    PyObject *pair = Py_BuildValue("(nO)", k, facts);
                    int failed = pair == NULL || PyList_Append(merges, pair) < 0;
                    Py_XDECREF(pair);
                    if (failed)
                        goto done;
                }
            }
            unit_k[u] = k;
            d->count += size;
            for (Py_ssize_t q = 0; q < size; q++) {
                Py_ssize_t i = rows[q];
                d->blocked += blocking[ctxv[i]] != 0;
                if (has_out[i]) {
                    if (__builtin_add_overflow(d->out, outv[i], &d->out)) {
                        fallback = 1;
                        goto done;
                    }
                    d->has_out = 1;
                }
                if (has_in[i]) {
                    if (__builtin_add_overflow(d->in, inv[i], &d->in)) {
                        fallback = 1;
                        goto done;
                    }
                    d->has_in = 1;
                }
                if (tsv[i] < tsv[d->first])
                    d->first = i;
                if (tsv[i] > tsv[d->last])
                    d->last = i;
                of[p] = (int)k;
                rowv[p++] = (int)i;
            }
            /* the first rows (a group's rows come in row order: only its first few) */
            for (Py_ssize_t q = 0; q < size && q < EVIDENCE; q++) {
                Py_ssize_t i = rows[q], at = d->nev;
                if (at == EVIDENCE && i > d->ev[EVIDENCE - 1])
                    break;
                while (at > 0 && d->ev[at - 1] > i)
                    at--;
                if (d->nev < EVIDENCE)
                    d->nev++;
                memmove(d->ev + at + 1, d->ev + at, (d->nev - 1 - at) * sizeof(Py_ssize_t));
                d->ev[at] = i;
            }
        }
    }

    /* the answer */
    groups = PyList_New(ngroups);
    if (groups == NULL)
        goto done;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *rows = PyList_New(sizes[g]);
        if (rows == NULL)
            goto done;
        for (Py_ssize_t q = 0; q < sizes[g]; q++) {
            PyObject *i = PyLong_FromSsize_t(order[starts[g] + q]);
            if (i == NULL) {
                Py_DECREF(rows);
                goto done;
            }
            PyList_SET_ITEM(rows, q, i);
        }
        PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(raised, firsts[g]), rows);
        Py_DECREF(rows);
        if (pair == NULL)
            goto done;
        PyList_SET_ITEM(groups, g, pair);
    }
    PyObject *lists[8];
    int made = 1;
    for (int c = 0; c < 8; c++)
        made &= (lists[c] = PyList_New(nk)) != NULL;
    for (Py_ssize_t k = 0; made && k < nk; k++) {
        Incident *d = &inc[k];
        PyObject *ev = PyList_New(d->nev);
        for (Py_ssize_t q = 0; ev != NULL && q < d->nev; q++) {
            PyObject *i = PyLong_FromSsize_t(d->ev[q]);
            if (i == NULL)
                Py_CLEAR(ev);
            else
                PyList_SET_ITEM(ev, q, i);
        }
        PyObject *values[8] = {
            PyLong_FromSsize_t(d->count),
            PyLong_FromSsize_t(d->blocked),
            d->has_out ? PyLong_FromLongLong(d->out) : Py_NewRef(Py_None),
            d->has_in ? PyLong_FromLongLong(d->in) : Py_NewRef(Py_None),
            ts_list ? Py_NewRef(PyList_GET_ITEM(ts, d->first)) : PyFloat_FromDouble(tsv[d->first]),
            ts_list ? Py_NewRef(PyList_GET_ITEM(ts, d->last)) : PyFloat_FromDouble(tsv[d->last]),
            ev,
            Py_NewRef(d->facts != NULL ? d->facts : Py_None),
        };
        for (int c = 0; c < 8; c++) {
            made &= values[c] != NULL;
            PyList_SET_ITEM(lists[c], k, values[c] != NULL ? values[c] : Py_NewRef(Py_None));
        }
    }
    PyObject *of_bytes = made ? PyBytes_FromStringAndSize((char *)of, p * sizeof(int)) : NULL;
    PyObject *row_bytes = made ? PyBytes_FromStringAndSize((char *)rowv, p * sizeof(int)) : NULL;
    if (of_bytes != NULL && row_bytes != NULL)
        result = PyTuple_Pack(14, groups, ids, incs, lists[0], lists[1], lists[2], lists[3],
                              lists[4], lists[5], lists[6], lists[7], merges, of_bytes,
                              row_bytes);
    for (int c = 0; c < 8; c++)
        Py_XDECREF(lists[c]);
    Py_XDECREF(of_bytes);
    Py_XDECREF(row_bytes);

done:
    PyBuffer_Release(&blocked);
    Py_XDECREF(index);
    Py_XDECREF(groups);
    Py_XDECREF(ids);
    Py_XDECREF(incs);
    Py_XDECREF(merges);
    PyMem_Free(tsv);
    PyMem_Free(outv);
    PyMem_Free(inv);
    PyMem_Free(has_out);
    PyMem_Free(has_in);
    PyMem_Free(group_of);
    PyMem_Free(firsts);
    PyMem_Free(sizes);
    PyMem_Free(starts);
    PyMem_Free(order);
    PyMem_Free(ctxv);
    PyMem_Free(unit_k);
    PyMem_Free((void *)keys);
    PyMem_Free(vals);
    PyMem_Free(inc);
    PyMem_Free(of);
    PyMem_Free(rowv);
    if (fallback && result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

/* packed_groups(groups) -> (flat, widths, rows, ends) | None: batch.py _packed_groups of
 * groups (a list of (incident rows, row indexes) pairs, each a list or tuple): the incident
 * rows in one list, and the bytes of arrays of ints of their widths, of the rows and of
 * the groups' ends in them; None for what it leaves to the Python code (another shape, a
 * row that is no int or beyond an int). */
static PyObject *
packed_groups(PyObject *self, PyObject *groups)
{
    if (!PyList_CheckExact(groups))
        Py_RETURN_NONE;
    Py_ssize_t g = PyList_GET_SIZE(groups), nrows = 0;
    for (Py_ssize_t k = 0; k < g; k++) {
        PyObject *pair = PyList_GET_ITEM(groups, k);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
            Py_RETURN_NONE;
        PyObject *incs = PyTuple_GET_ITEM(pair, 0), *rows = PyTuple_GET_ITEM(pair, 1);
        if ((!PyList_CheckExact(incs) && !PyTuple_CheckExact(incs)) ||
            (!PyList_CheckExact(rows) && !PyTuple_CheckExact(rows)))
            Py_RETURN_NONE;
        nrows += PySequence_Fast_GET_SIZE(rows);
    }
    if (nrows >= INT32_MAX)
        Py_RETURN_NONE;
    PyObject *flat = PyList_New(0), *result = NULL;
    PyObject *widths = PyBytes_FromStringAndSize(NULL, g * (Py_ssize_t)sizeof(int));
    PyObject *rowv = PyBytes_FromStringAndSize(NULL, nrows * (Py_ssize_t)sizeof(int));
    PyObject *ends = PyBytes_FromStringAndSize(NULL, g * (Py_ssize_t)sizeof(int));
    int ok = flat != NULL && widths != NULL && rowv != NULL && ends != NULL, leave = 0;
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; ok && !leave && k < g; k++) {
        PyObject *pair = PyList_GET_ITEM(groups, k);
        PyObject *incs = PyTuple_GET_ITEM(pair, 0), *rows = PyTuple_GET_ITEM(pair, 1);
        Py_ssize_t width = PySequence_Fast_GET_SIZE(incs);
        if (width > INT32_MAX) {
            leave = 1;
            break;
        }
        for (Py_ssize_t j = 0; ok && j < width; j++)
            ok = PyList_Append(flat, PySequence_Fast_GET_ITEM(incs, j)) == 0;
        ((int *)PyBytes_AS_STRING(widths))[k] = (int)width;
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(rows); j++) {
            PyObject *x = PySequence_Fast_GET_ITEM(rows, j);
            int overflow = 0;
            long v = PyLong_CheckExact(x) ? PyLong_AsLongAndOverflow(x, &overflow) : 0;
            if (!PyLong_CheckExact(x) || overflow || v < INT32_MIN || v > INT32_MAX) {
                leave = 1;
                break;
            }
            ((int *)PyBytes_AS_STRING(rowv))[at++] = (int)v;
        }
        ((int *)PyBytes_AS_STRING(ends))[k] = (int)at;
    }
    if (ok && !leave)
        result = PyTuple_Pack(4, flat, widths, rowv, ends);
    else if (ok)
        result = Py_NewRef(Py_None);
    Py_XDECREF(flat);
    Py_XDECREF(widths);
    Py_XDECREF(rowv);
    Py_XDECREF(ends);
    return result;
}

/* stream_refs(objects, number, table, new) -> bytes | None: batch.py BatchStream._refs:
 * the number of each of `objects` (a list) in a stream's table (`table`, a list, numbered
 * by `number`, a dict of id(row) -> index), as the bytes of an array of ints; an object
 * not in it yet is appended to `table` and to `new` (in order of first appearance) and
 * numbered. None for what it leaves to the Python code (other types, a table too big for
 * an int); a number that is no int, or beyond an int, raises as the array would. Per
 * object, a dict look-up on its id and no Python code (the C code keeps the same dict the
 * Python code does: id() is PyLong_FromVoidPtr). */
static PyObject *
stream_refs(PyObject *self, PyObject *args)
{
    PyObject *objects, *number, *table, *new;
    if (!PyArg_ParseTuple(args, "OOOO:stream_refs", &objects, &number, &table, &new))
        return NULL;
    if (!PyList_CheckExact(objects) || !PyDict_CheckExact(number) || !PyList_CheckExact(table) ||
        !PyList_CheckExact(new))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(objects);
    if (PyList_GET_SIZE(table) > INT32_MAX - n)
        Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int));
    if (out == NULL)
        return NULL;
    int *refs = (int *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(objects, i);
        PyObject *key = PyLong_FromVoidPtr(obj);
        if (key == NULL)
            goto error;
        PyObject *found = PyDict_GetItemWithError(number, key); /* borrowed */
        if (found != NULL) {
            Py_DECREF(key);
            int overflow = 0;
            long v = PyLong_Check(found) ? PyLong_AsLongAndOverflow(found, &overflow) : 0;
            if (!PyLong_Check(found)) {
                PyErr_SetString(PyExc_TypeError, "stream_refs: a number that is no int");
                goto error;
            }
            if (v == -1 && PyErr_Occurred())
                goto error;
            if (overflow || v < INT32_MIN || v > INT32_MAX) {
                PyErr_SetString(PyExc_OverflowError, "stream_refs: a number beyond an int");
                goto error;
            }
            refs[i] = (int)v;
            continue;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            goto error;
        }
        Py_ssize_t at = PyList_GET_SIZE(table);
        PyObject *index = PyLong_FromSsize_t(at);
        int failed = index == NULL || PyDict_SetItem(number, key, index) < 0 ||
                     PyList_Append(table, obj) < 0 || PyList_Append(new, obj) < 0;
        Py_XDECREF(index);
        Py_DECREF(key);
        if (failed)
            goto error;
        refs[i] = (int)at;
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

/* row_values(rows, keys) -> list | None: batch.py _row_values: per row of `rows` (a list),
 * the tuple of its values when its keys are `keys` (a tuple) in order, else the row itself;
 * None for what it leaves to the Python code (other types, a row that is no dict, a key
 * that is no str: comparing it might run Python code). */
static PyObject *
row_values(PyObject *self, PyObject *args)
{
    PyObject *rows, *keys;
    if (!PyArg_ParseTuple(args, "OO:row_values", &rows, &keys))
        return NULL;
    if (!PyList_CheckExact(rows) || !PyTuple_CheckExact(keys))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(rows), width = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t j = 0; j < width; j++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(keys, j)))
            Py_RETURN_NONE;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i), *key, *value;
        if (!PyDict_CheckExact(row)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        /* one pass: every key a str (else all is left to Python), the values while the
           keys are `keys` */
        int same = PyDict_GET_SIZE(row) == width;
        PyObject *made = same ? PyTuple_New(width) : NULL;
        if (same && made == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        Py_ssize_t at = 0, j = 0;
        while (PyDict_Next(row, &at, &key, &value)) {
            if (!PyUnicode_CheckExact(key)) {
                Py_XDECREF(made);
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            if (same) {
                PyObject *want = PyTuple_GET_ITEM(keys, j);
                same = key == want || PyUnicode_Compare(key, want) == 0;
                PyTuple_SET_ITEM(made, j++, Py_NewRef(value));
            }
        }
        if (!same) {
            Py_XDECREF(made); /* (its unset items are NULL: freed as none) */
            made = Py_NewRef(row);
        }
        PyList_SET_ITEM(out, i, made);
    }
    return out;
}

/* hour_runs(ts) -> list | None: batch.py _hour_runs of a list or array('d') of floats
 * (None: not one) */
static PyObject *
hour_runs(PyObject *self, PyObject *ts)
{
    Py_buffer view = {0};
    int list = PyList_CheckExact(ts);
    Py_ssize_t n = list ? PyList_GET_SIZE(ts) : PyObject_Size(ts);
    if (n < 0)
        PyErr_Clear();
    if (!list && (n < 0 || !column_view(ts, "d", n, &view)))
        Py_RETURN_NONE;
    const double *tsv = view.buf;
    long long prev = 0;
    /* the previous row's hour as [lo, hi): a row in it is in that hour (no fmod a row) */
    double lo = 1.0, hi = 0.0;
    PyObject *runs = PyList_New(0);
    if (runs == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i <= n; i++) {
        long long hour = 0;
        if (i < n) {
            PyObject *t = list ? PyList_GET_ITEM(ts, i) : NULL;
            double v = t == NULL ? tsv[i] : PyFloat_CheckExact(t) ? PyFloat_AS_DOUBLE(t) : NAN;
            if (!(fabs(v) < 1e15)) { /* not a float, NaN, or far beyond any log's time */
                Py_DECREF(runs);
                PyBuffer_Release(&view);
                Py_RETURN_NONE;
            }
            if (lo <= v && v < hi) {
                hour = prev;
            } else {
                /* Python's float floor division t // 3600 (Objects/floatobject.c): below
                 * 1e15, exactly the floor of t / 3600, so [lo, hi) holds the hour's times */
                double mod = fmod(v, 3600.0), div = (v - mod) / 3600.0;
                if (mod < 0)
                    div -= 1.0;
                double floored = floor(div);
                if (div - floored > 0.5)
                    floored += 1.0;
                hour = (long long)floored;
                lo = floored * 3600.0;
                hi = lo + 3600.0;
            }
        }
        if (i > 0 && (i == n || hour != prev)) {
            PyObject *run = Py_BuildValue("(Ln)", prev, i);
            if (run == NULL || PyList_Append(runs, run) < 0) {
                Py_XDECREF(run);
                Py_DECREF(runs);
                PyBuffer_Release(&view);
                return NULL;
            }
            Py_DECREF(run);
        }
        prev = hour;
    }
    PyBuffer_Release(&view);
    return runs;
}

/* batch_rows(items, typecodes, slots, clients, context_of, client_of, codes) -> tuple
 *
 * What batch.py BatchBuilder.batch makes of its items (see there: per record the tuple
 * (entry, values, record id, observation id), the entry (slot, client number, incident
 * rows, context, first record), values a tuple of len(typecodes) - 1; per run of known
 * records the pair (entries, packed records): KnownRecord in collectors/_accel.h, whose
 * values `codes` (KNOWN_*) name, in values' order): the tuple (ids, columns, ctx, client,
 * raised, record ids), columns the values transposed. A column (ids the first) whose
 * typecode is "d" or "q" and whose every value is a float, or an int within 64 bits, comes
 * as the bytes of its array (batch.py _typed), else as a list; the record ids as their
 * bytes, 12 a record, when every one is 24 lowercase hex digits (batch.py _packed_ids),
 * else as a list; ctx and client as the bytes of arrays of ints. A record's context index
 * is slots[slot], its client index
 * clients[client number]; when one is not there yet, context_of(entry) or
 * client_of(entry) (Python) returns it (and puts it there). Records of one entry object
 * (a known line key's) are looked up once. */
typedef struct {
    PyObject *entry; /* held by items */
    int c, w;        /* its context and client indexes */
} Seen;

#define MAX_COLUMNS 64

static PyObject *
index_of(PyObject *dict, PyObject *key, PyObject *make, PyObject *entry)
{
    PyObject *found = PyDict_GetItemWithError(dict, key);
    if (found != NULL)
        return Py_NewRef(found);
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallOneArg(make, entry);
}

/* the value of 'd' (1) or 'q' (2) column kind an object gives, into *v; 0: not one */
static int
typed_value(PyObject *x, int kind, double *d, int64_t *q)
{
    if (kind == 1) {
        if (!PyFloat_CheckExact(x))
            return 0;
        *d = PyFloat_AS_DOUBLE(x);
        return 1;
    }
    return int64_of(x, q);
}

/* a record id's bytes into raw when it is 24 lowercase hex digits; 0 when it is not */
static int
rid_bytes(PyObject *rid, unsigned char *raw)
{
    if (!PyUnicode_Check(rid) || PyUnicode_GET_LENGTH(rid) != 2 * RECORD_ID_BYTES ||
        PyUnicode_KIND(rid) != PyUnicode_1BYTE_KIND)
        return 0;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(rid);
    for (int k = 0; k < 2 * RECORD_ID_BYTES; k++) {
        int c = s[k], v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        if (k % 2 == 0)
            raw[k / 2] = (unsigned char)(v << 4);
        else
            raw[k / 2] |= (unsigned char)v;
    }
    return 1;
}

/* a known record's value of `code` as an object (a new reference) */
static PyObject *
known_value(const KnownRecord *r, int code)
{
    switch (code) {
    case KNOWN_TS:
        return PyFloat_FromDouble(r->ts);
    case KNOWN_LINE:
        return PyLong_FromLongLong(r->line);
    case KNOWN_BYTES_IN:
        return PyLong_FromLongLong(r->bytes_in);
    case KNOWN_DURATION:
        return PyFloat_FromDouble(r->duration);
    default:
        return Py_NewRef(Py_None);
    }
}

static PyObject *
batch_rows(PyObject *self, PyObject *args)
{
    PyObject *list, *typecodes, *slots, *clients, *context_of, *client_of, *codes_arg;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OOO!:batch_rows", &PyList_Type, &list, &PyTuple_Type,
                          &typecodes, &PyDict_Type, &slots, &PyDict_Type, &clients, &context_of,
                          &client_of, &PyTuple_Type, &codes_arg))
        return NULL;
    Py_ssize_t ncols = PyTuple_GET_SIZE(typecodes), nvalues = ncols - 1;
    Py_ssize_t ncodes = PyTuple_GET_SIZE(codes_arg);
    int kind[MAX_COLUMNS], code[MAX_COLUMNS]; /* kind: 0 a list, 1 'd', 2 'q' */
    if (ncols < 1 || ncols > MAX_COLUMNS || (ncodes != 0 && ncodes != nvalues)) {
        PyErr_SetString(PyExc_ValueError, "batch_rows: typecodes (1 to 64) and codes (one a value)");
        return NULL;
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        PyObject *t = PyTuple_GET_ITEM(typecodes, c);
        if (!PyUnicode_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "batch_rows: a typecode is not a str");
            return NULL;
        }
        kind[c] = PyUnicode_CompareWithASCIIString(t, "d") == 0   ? 1
                  : PyUnicode_CompareWithASCIIString(t, "q") == 0 ? 2
                                                                  : 0;
        code[c] = KNOWN_NONE;
        if (c > 0 && ncodes) {
            long v = PyLong_AsLong(PyTuple_GET_ITEM(codes_arg, c - 1));
            if (v < KNOWN_NONE || v > KNOWN_DURATION) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "batch_rows: a code out of range");
                return NULL;
            }
            code[c] = (int)v;
        }
    }
    PyObject *items = PyList_AsTuple(list); /* held: the callbacks run Python code */
    if (items == NULL)
        return NULL;
    Py_ssize_t nitems = PyTuple_GET_SIZE(items), n = 0;
    for (Py_ssize_t i = 0; i < nitems; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i), *entry, *values;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2 &&
            PyList_CheckExact(PyTuple_GET_ITEM(item, 0)) &&
            PyBytes_CheckExact(PyTuple_GET_ITEM(item, 1)) && ncodes == nvalues &&
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 1)) ==
                PyList_GET_SIZE(PyTuple_GET_ITEM(item, 0)) * (Py_ssize_t)sizeof(KnownRecord)) {
            /* its entries held as they are now (a tuple in the run's place in `items`, a
             * tuple of our own): the callbacks run Python code, which may change the list */
            PyObject *entries = PyList_AsTuple(PyTuple_GET_ITEM(item, 0));
            PyObject *held = entries ? PyTuple_Pack(2, entries, PyTuple_GET_ITEM(item, 1)) : NULL;
            Py_XDECREF(entries);
            if (held == NULL) {
                Py_DECREF(items);
                return NULL;
            }
            PyTuple_SetItem(items, i, held); /* (steals held; items is ours alone) */
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(entries); j++) {
                entry = PyTuple_GET_ITEM(entries, j);
                if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 3)
                    goto bad_item;
            }
            n += PyTuple_GET_SIZE(entries);
            continue;
        }
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 4 ||
            !PyTuple_CheckExact(entry = PyTuple_GET_ITEM(item, 0)) ||
            PyTuple_GET_SIZE(entry) < 3 || !PyTuple_CheckExact(values = PyTuple_GET_ITEM(item, 1)) ||
            PyTuple_GET_SIZE(values) != nvalues)
            goto bad_item;
        n++;
    }
    if (0) {
    bad_item:
        PyErr_SetString(PyExc_ValueError,
                        "batch_rows: an item is not (entry, values, id, id) nor a run");
        Py_DECREF(items);
        return NULL;
    }
    PyObject *result = NULL, *out[3] = {NULL}, *columns = NULL, *rids = NULL;
    PyObject *col[MAX_COLUMNS] = {NULL};
    size_t cap = 8;
    while (cap < 2 * (size_t)n)
        cap <<= 1;
    Seen *seen = PyMem_Calloc(cap, sizeof(Seen));
    Seen **of = PyMem_Malloc((n > 0 ? n : 1) * sizeof(Seen *));
    int typed_rids = n > 0;
    int ok = seen != NULL && of != NULL;
    if (!ok)
        PyErr_NoMemory();
    /* first: each record's context and client, and which columns are typed */
    for (Py_ssize_t i = 0, r = 0; ok && i < nitems; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        int run = PyTuple_GET_SIZE(item) == 2;
        PyObject *entries = run ? PyTuple_GET_ITEM(item, 0) : NULL;
        Py_ssize_t count = run ? PyTuple_GET_SIZE(entries) : 1;
        if (!run) {
            PyObject *values = PyTuple_GET_ITEM(item, 1);
            unsigned char raw[RECORD_ID_BYTES];
            double d;
            int64_t q;
            for (Py_ssize_t c = 0; c < ncols; c++)
                if (kind[c])
                    kind[c] *= typed_value(c ? PyTuple_GET_ITEM(values, c - 1)
                                             : PyTuple_GET_ITEM(item, 3),
                                           kind[c], &d, &q);
            typed_rids = typed_rids && rid_bytes(PyTuple_GET_ITEM(item, 2), raw);
        } else {
            if (kind[0] != 2) /* observation ids: ints */
                kind[0] = 0;
            for (Py_ssize_t c = 1; c < ncols; c++) /* a code of the column's type */
                if (!(kind[c] == 1 && (code[c] == KNOWN_TS || code[c] == KNOWN_DURATION)) &&
                    !(kind[c] == 2 && (code[c] == KNOWN_LINE || code[c] == KNOWN_BYTES_IN)))
                    kind[c] = 0;
        }
        for (Py_ssize_t j = 0; ok && j < count; j++, r++) {
            PyObject *entry = run ? PyTuple_GET_ITEM(entries, j) : PyTuple_GET_ITEM(item, 0);
            size_t s = slot_of(entry, cap - 1);
            while (seen[s].entry != NULL && seen[s].entry != entry)
                s = (s + 1) & (cap - 1);
            Seen *e = &seen[s];
            if (e->entry == NULL) {
                PyObject *c = index_of(slots, PyTuple_GET_ITEM(entry, 0), context_of, entry);
                PyObject *w = c == NULL ? NULL
                                        : index_of(clients, PyTuple_GET_ITEM(entry, 1), client_of,
                                                   entry);
                if (w == NULL) {
                    Py_XDECREF(c);
                    ok = 0;
                    break;
                }
                e->entry = entry;
                long cl = PyLong_Check(c) ? PyLong_AsLong(c) : -1, wl = PyLong_Check(w) ? PyLong_AsLong(w) : -1;
                Py_DECREF(c);
                Py_DECREF(w);
                if (cl < 0 || wl < 0 || cl > INT32_MAX || wl > INT32_MAX) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_ValueError, "batch_rows: an index is not an int");
                    ok = 0;
                    break;
                }
                e->c = (int)cl;
                e->w = (int)wl;
            }
            of[r] = e;
        }
    }
    /* then the columns (ctx and client: the bytes of arrays of ints) */
    for (int c = 0; ok && c < 3; c++)
        ok = (out[c] = c < 2 ? PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int))
                             : PyList_New(n)) != NULL;
    for (Py_ssize_t c = 0; ok && c < ncols; c++)
        ok = (col[c] = kind[c] ? PyBytes_FromStringAndSize(NULL, n * 8) : PyList_New(n)) != NULL;
    if (ok)
        ok = (rids = typed_rids ? PyBytes_FromStringAndSize(NULL, n * RECORD_ID_BYTES) : PyList_New(n)) !=
             NULL;
    for (Py_ssize_t i = 0, r = 0; ok && i < nitems; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (PyTuple_GET_SIZE(item) == 2) {
            PyObject *entries = PyTuple_GET_ITEM(item, 0);
            const KnownRecord *known = (const KnownRecord *)PyBytes_AS_STRING(PyTuple_GET_ITEM(item, 1));
            for (Py_ssize_t j = 0; ok && j < PyTuple_GET_SIZE(entries); j++, r++) {
                const KnownRecord *k = &known[j];
                for (Py_ssize_t c = 0; ok && c < ncols; c++) {
                    int what = c ? code[c] : -1; /* -1: the observation id */
                    if (kind[c] == 1) {
                        double v = what == KNOWN_TS ? k->ts : k->duration;
                        memcpy(PyBytes_AS_STRING(col[c]) + 8 * r, &v, 8);
                    } else if (kind[c] == 2) {
                        int64_t v = what < 0 ? k->oid : what == KNOWN_LINE ? k->line : k->bytes_in;
                        memcpy(PyBytes_AS_STRING(col[c]) + 8 * r, &v, 8);
                    } else {
                        PyObject *v = what < 0 ? PyLong_FromLongLong(k->oid) : known_value(k, what);
                        ok = v != NULL;
                        PyList_SET_ITEM(col[c], r, v);
                    }
                }
                if (typed_rids) {
                    memcpy(PyBytes_AS_STRING(rids) + RECORD_ID_BYTES * r, k->rid, RECORD_ID_BYTES);
                } else if (ok) {
                    static const char hex[] = "0123456789abcdef";
                    PyObject *v = PyUnicode_New(2 * RECORD_ID_BYTES, 127);
                    ok = v != NULL;
                    for (int b = 0; ok && b < RECORD_ID_BYTES; b++) {
                        PyUnicode_1BYTE_DATA(v)[2 * b] = (Py_UCS1)hex[k->rid[b] >> 4];
                        PyUnicode_1BYTE_DATA(v)[2 * b + 1] = (Py_UCS1)hex[k->rid[b] & 15];
                    }
                    PyList_SET_ITEM(rids, r, v);
                }
                ((int *)PyBytes_AS_STRING(out[0]))[r] = of[r]->c;
                ((int *)PyBytes_AS_STRING(out[1]))[r] = of[r]->w;
                PyList_SET_ITEM(out[2], r, Py_NewRef(PyTuple_GET_ITEM(PyTuple_GET_ITEM(entries, j), 2)));
            }
            continue;
        }
        PyObject *entry = PyTuple_GET_ITEM(item, 0), *values = PyTuple_GET_ITEM(item, 1);
        for (Py_ssize_t c = 0; c < ncols; c++) {
            PyObject *v = c ? PyTuple_GET_ITEM(values, c - 1) : PyTuple_GET_ITEM(item, 3);
            double d = 0;
            int64_t q = 0;
            if (kind[c]) {
                typed_value(v, kind[c], &d, &q); /* (checked above) */
                memcpy(PyBytes_AS_STRING(col[c]) + 8 * r, kind[c] == 1 ? (void *)&d : (void *)&q, 8);
            } else {
                PyList_SET_ITEM(col[c], r, Py_NewRef(v));
            }
        }
        if (typed_rids)
            rid_bytes(PyTuple_GET_ITEM(item, 2), (unsigned char *)PyBytes_AS_STRING(rids) + RECORD_ID_BYTES * r);
        else
            PyList_SET_ITEM(rids, r, Py_NewRef(PyTuple_GET_ITEM(item, 2)));
        ((int *)PyBytes_AS_STRING(out[0]))[r] = of[r]->c;
        ((int *)PyBytes_AS_STRING(out[1]))[r] = of[r]->w;
        PyList_SET_ITEM(out[2], r, Py_NewRef(PyTuple_GET_ITEM(entry, 2)));
        r++;
    }
    if (ok)
        ok = (columns = PyList_New(nvalues)) != NULL;
    for (Py_ssize_t c = 1; ok && c < ncols; c++)
        PyList_SET_ITEM(columns, c - 1, Py_NewRef(col[c]));
    if (ok)
        result = Py_BuildValue("(OOOOOO)", col[0], columns, out[0], out[1], out[2], rids);
    PyMem_Free(seen);
    PyMem_Free(of);
    for (int c = 0; c < 3; c++)
        Py_XDECREF(out[c]);
    for (Py_ssize_t c = 0; c < ncols; c++)
        Py_XDECREF(col[c]);
    Py_XDECREF(columns);
    Py_XDECREF(rids);
    Py_DECREF(items);
    return result;
}

/* rollup(ts, out, in_, url, ctx, client, contexts, clients, sparse) -> tuple | False | None
 *
 * batch.py rollup_of of the rows given column by column (lists; `contexts` and `clients`
 * how many distinct ones, `sparse` batch._SPARSE): the Rollup's fields as a tuple (its
 * arrays as bytes of native ints/int64/doubles, a bytes column None when all NULL, else
 * bytes when no sum is NULL or a list), False where rollup_of returns None (a time not
 * finite or beyond +-1e18, bytes of a type SQLite stores as another, too many roll-up
 * rows), None for what this leaves to rollup_of (a column neither a list nor an array of
 * its typecode, a time
 * that is neither a float nor an int of at most 53 bits, bytes that are bool or leave 64
 * bits, or a sum that does, odd indexes, values of other types). */
typedef struct {
    int64_t key; /* c * clients + w */
    Py_ssize_t run, entry;
} Slot;

typedef struct {
    Py_ssize_t ctx, client, run, requests;
    int64_t out, in;
    int has_out, has_in;
    PyObject *url; /* borrowed, or NULL */
    double first, last;
} Entry;

typedef struct {
    double t;
    Py_ssize_t i;
} Timed;

static int
timed_cmp(const void *a, const void *b)
{
    const Timed *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i; /* stable, as sorted() */
}

/* a bytes column's value: 1 an int (in *v), 0 None, 2 a type SQLite stores as another,
 * -1 one left to Python */
static int
stored_int(PyObject *x, int64_t *v)
{
    if (x == Py_None)
        return 0;
    if (PyLong_CheckExact(x)) {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow || (value == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        *v = (int64_t)value;
        return 1;
    }
    return PyFloat_CheckExact(x) || PyUnicode_CheckExact(x) ? 2 : -1;
}

static inline int
add_checked(int64_t *sum, int *has, int64_t v)
{
    if (!*has) {
        *sum = v;
        *has = 1;
        return 1;
    }
    return !__builtin_add_overflow(*sum, v, sum);
}

static PyObject *
sums_of(const Entry *e, Py_ssize_t size, int in, int all_null)
{
    if (all_null)
        Py_RETURN_NONE;
    int complete = 1;
    for (Py_ssize_t k = 0; k < size && complete; k++)
        complete = in ? e[k].has_in : e[k].has_out;
    if (complete) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, size * (Py_ssize_t)sizeof(int64_t));
        if (b == NULL)
            return NULL;
        int64_t *v = (int64_t *)PyBytes_AS_STRING(b);
        for (Py_ssize_t k = 0; k < size; k++)
            v[k] = in ? e[k].in : e[k].out;
        return b;
    }
    PyObject *list = PyList_New(size);
    for (Py_ssize_t k = 0; list != NULL && k < size; k++) {
        PyObject *x = (in ? e[k].has_in : e[k].has_out)
                          ? PyLong_FromLongLong(in ? e[k].in : e[k].out)
                          : Py_NewRef(Py_None);
        if (x == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, k, x);
    }
    return list;
}

static PyObject *
rollup(PyObject *self, PyObject *args)
{
    PyObject *ts, *out, *in, *url, *ctx, *client;
    Py_ssize_t contexts, clients;
    double sparse;
    if (!PyArg_ParseTuple(args, "OOOOOOnnd:rollup", &ts, &out, &in, &url, &ctx, &client,
                          &contexts, &clients, &sparse))
        return NULL;
    if (!PyList_CheckExact(url))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(url); /* ctx and client: lists, or arrays of ints */
    /* ts, out and in: lists, or arrays of doubles and int64 (column_view) */
    int ts_list = PyList_CheckExact(ts), out_list = PyList_CheckExact(out),
        in_list = PyList_CheckExact(in);
    if ((ts_list && PyList_GET_SIZE(ts) != n) || (out_list && PyList_GET_SIZE(out) != n) ||
        (in_list && PyList_GET_SIZE(in) != n) ||
        n >= INT32_MAX ||
        contexts < 0 || clients < 0 || contexts >= INT32_MAX || clients >= INT32_MAX ||
        contexts > 2 * n + 64)
        Py_RETURN_NONE;
    if (n == 0)
        Py_RETURN_FALSE;
    Py_buffer views[3] = {{0}}; /* of ts, out, in when they are arrays */
    if ((!ts_list && !column_view(ts, "d", n, &views[0])) ||
        (!out_list && !column_view(out, "q", n, &views[1])) ||
        (!in_list && !column_view(in, "q", n, &views[2]))) {
        for (int k = 0; k < 3; k++)
            PyBuffer_Release(&views[k]);
        Py_RETURN_NONE;
    }
    const double *tsv = views[0].buf;
    const int64_t *outs = views[1].buf, *ins = views[2].buf;
    PyObject *result = NULL;
    Timed *timed = PyMem_Malloc(n * sizeof(Timed));
    int64_t *outv = PyMem_Malloc(n * sizeof(int64_t)), *inv = PyMem_Malloc(n * sizeof(int64_t));
    char *kind = PyMem_Malloc(2 * n); /* per row: out, in: 1 a value, 0 NULL */
    Py_ssize_t *cv = PyMem_Malloc(2 * n * sizeof(Py_ssize_t));
    Entry *entries = NULL;
    Slot *slots = NULL;
    Py_ssize_t *hourly = NULL, *hourly_run = NULL;
    Entry *hrow = NULL;
    int64_t *hours = NULL;
    size_t cap = 8;
    while (cap < 2 * (size_t)n)
        cap <<= 1;
    if (timed == NULL || outv == NULL || inv == NULL || kind == NULL || cv == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* the indexes, as pairs: ctx then client (read apart, then interleaved) */
    Py_ssize_t *wv = PyMem_Malloc(n * sizeof(Py_ssize_t));
    if (wv == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int read = indexes_in(ctx, n, cv + n) && indexes_in(client, n, wv);
    for (Py_ssize_t i = 0; read && i < n; i++) {
        Py_ssize_t c = cv[n + i]; /* (before 2i + 1 may overwrite it) */
        cv[2 * i] = c;
        cv[2 * i + 1] = wv[i];
    }
    PyMem_Free(wv);
    if (!read)
        goto fallback;
    /* the values: any left to Python first (it may raise on them), then those it rolls
     * up to None */
    int none = 0, sorted_ = 1, any_out = 0, any_in = 0, any_url = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = ts_list ? PyList_GET_ITEM(ts, i) : NULL, *u = PyList_GET_ITEM(url, i);
        double v;
        if (t == NULL)
            v = tsv[i];
        else if (PyFloat_CheckExact(t))
            v = PyFloat_AS_DOUBLE(t);
        else if (PyLong_CheckExact(t)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(t, &overflow);
            if (overflow || x > (1LL << 53) || x < -(1LL << 53)) {
                PyErr_Clear();
                goto fallback;
            }
            v = (double)x;
        }
        else
            goto fallback;
        Py_ssize_t ci = cv[2 * i], wi = cv[2 * i + 1];
        if (ci < 0 || ci >= contexts || wi < 0 || wi >= clients)
            goto fallback;
        if (!(v > -1e18 && v < 1e18)) /* NaN, infinite or beyond batch._TS_BOUND */
            none = 1;
        timed[i].t = v;
        timed[i].i = i;
        if (i > 0 && !(timed[i - 1].t <= v))
            sorted_ = 0;
        int ko = out_list ? stored_int(PyList_GET_ITEM(out, i), &outv[i]) : (outv[i] = outs[i], 1);
        int ki = in_list ? stored_int(PyList_GET_ITEM(in, i), &inv[i]) : (inv[i] = ins[i], 1);
        if (ko < 0 || ki < 0)
            goto fallback;
        none |= ko == 2 || ki == 2;
        kind[2 * i] = ko == 1;
        kind[2 * i + 1] = ki == 1;
        any_out |= ko != 0;
        any_in |= ki != 0;
        if (u != Py_None) {
            if (PyUnicode_CheckExact(u))
                any_url = 1;
            else if (PyLong_CheckExact(u) || PyFloat_CheckExact(u))
                none = 1;
            else
                goto fallback;
        }
    }
    if (none) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    if (!sorted_)
        qsort(timed, n, sizeof(Timed), timed_cmp);
    entries = PyMem_Malloc(n * sizeof(Entry));
    slots = PyMem_Calloc(cap, sizeof(Slot));
    hours = PyMem_Malloc(n * sizeof(int64_t));
    if (entries == NULL || slots == NULL || hours == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* entries per (run of an hour, context, client), in order of first use (rows in time
     * order); slots of earlier runs count as free (run stamps start at 1) */
    Py_ssize_t runs = 0, size = 0;
    int overflow = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t i = timed[r].i;
        double t = timed[r].t;
        int64_t hour = (int64_t)(t / 3600.0); /* CAST(ts / 3600 AS INTEGER): truncated */
        if (runs == 0 || hours[runs - 1] != hour)
            hours[runs++] = hour;
        Py_ssize_t run = runs, c = cv[2 * i], w = cv[2 * i + 1];
        int64_t key = (int64_t)c * clients + w;
        size_t s = (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1);
        while (slots[s].run == run && slots[s].key != key)
            s = (s + 1) & (cap - 1);
        Entry *e;
        if (slots[s].run != run) {
            slots[s].run = run;
            slots[s].key = key;
            slots[s].entry = size;
            e = &entries[size++];
            e->ctx = c;
            e->client = w;
            e->run = run - 1;
            e->requests = 1;
            e->has_out = kind[2 * i];
            e->out = outv[i];
            e->has_in = kind[2 * i + 1];
            e->in = inv[i];
            e->url = PyList_GET_ITEM(url, i);
            if (e->url == Py_None)
                e->url = NULL;
            e->first = e->last = t;
            continue;
        }
        e = &entries[slots[s].entry];
        e->requests++;
        if (kind[2 * i] && !add_checked(&e->out, &e->has_out, outv[i]))
            overflow = 1;
        if (kind[2 * i + 1] && !add_checked(&e->in, &e->has_in, inv[i]))
            overflow = 1;
        PyObject *u = PyList_GET_ITEM(url, i);
        if (u != Py_None) {
            if (e->url == NULL)
                e->url = u;
            else {
                int less = PyUnicode_Compare(u, e->url);
                if (less == -1 && PyErr_Occurred())
                    goto done;
                if (less < 0)
                    e->url = u;
            }
        }
        e->last = t;
    }
    if ((double)size > (double)n * sparse) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    if (overflow)
        goto fallback;
    /* the hourly rows: per (run, context), in order of first use by the entries */
    hourly = PyMem_Malloc((contexts > 0 ? contexts : 1) * sizeof(Py_ssize_t));
    hourly_run = PyMem_Malloc((contexts > 0 ? contexts : 1) * sizeof(Py_ssize_t));
    hrow = PyMem_Malloc((size > 0 ? size : 1) * sizeof(Entry));
    if (hourly == NULL || hourly_run == NULL || hrow == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < contexts; c++)
        hourly_run[c] = -1;
    Py_ssize_t nh = 0;
    for (Py_ssize_t k = 0; k < size; k++) {
        Entry *e = &entries[k];
        if (hourly_run[e->ctx] != e->run) {
            hourly_run[e->ctx] = e->run;
            hourly[e->ctx] = nh;
            hrow[nh] = *e;
            nh++;
            continue;
        }
        Entry *h = &hrow[hourly[e->ctx]];
        h->requests += e->requests;
        if (e->has_out && !add_checked(&h->out, &h->has_out, e->out))
            overflow = 1;
        if (e->has_in && !add_checked(&h->in, &h->has_in, e->in))
            overflow = 1;
    }
    if (overflow)
        goto fallback;
    PyObject *f[13] = {NULL};
    f[0] = PyBytes_FromStringAndSize(NULL, size * sizeof(int));
    f[1] = PyBytes_FromStringAndSize(NULL, size * sizeof(int));
    f[2] = PyBytes_FromStringAndSize(NULL, size * sizeof(int64_t));
    f[6] = PyBytes_FromStringAndSize(NULL, size * sizeof(double));
    f[7] = PyBytes_FromStringAndSize(NULL, size * sizeof(double));
    f[8] = PyBytes_FromStringAndSize(NULL, nh * sizeof(int));
    f[9] = PyBytes_FromStringAndSize(NULL, nh * sizeof(int64_t));
    f[10] = PyBytes_FromStringAndSize(NULL, nh * sizeof(int64_t));
    f[3] = sums_of(entries, size, 0, !any_out);
    f[4] = sums_of(entries, size, 1, !any_in);
    f[11] = sums_of(hrow, nh, 0, !any_out);
    f[12] = sums_of(hrow, nh, 1, !any_in);
    if (any_url) {
        f[5] = PyList_New(size);
        for (Py_ssize_t k = 0; f[5] != NULL && k < size; k++)
            PyList_SET_ITEM(f[5], k, Py_NewRef(entries[k].url ? entries[k].url : Py_None));
    }
    else
        f[5] = Py_NewRef(Py_None);
    int ok = 1;
    for (int j = 0; j < 13; j++)
        ok &= f[j] != NULL;
    if (ok) {
        int *ec = (int *)PyBytes_AS_STRING(f[0]), *ew = (int *)PyBytes_AS_STRING(f[1]);
        int64_t *eq = (int64_t *)PyBytes_AS_STRING(f[2]);
        double *ef = (double *)PyBytes_AS_STRING(f[6]), *el = (double *)PyBytes_AS_STRING(f[7]);
        for (Py_ssize_t k = 0; k < size; k++) {
            ec[k] = (int)entries[k].ctx;
            ew[k] = (int)entries[k].client;
            eq[k] = entries[k].requests;
            ef[k] = entries[k].first;
            el[k] = entries[k].last;
        }
        int *hc = (int *)PyBytes_AS_STRING(f[8]);
        int64_t *hh = (int64_t *)PyBytes_AS_STRING(f[9]), *hq = (int64_t *)PyBytes_AS_STRING(f[10]);
        for (Py_ssize_t k = 0; k < nh; k++) {
            hc[k] = (int)hrow[k].ctx;
            hh[k] = hours[hrow[k].run];
            hq[k] = hrow[k].requests;
        }
        result = PyTuple_New(13);
        for (int j = 0; result != NULL && j < 13; j++)
            PyTuple_SET_ITEM(result, j, Py_NewRef(f[j]));
    }
    for (int j = 0; j < 13; j++)
        Py_XDECREF(f[j]);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(timed);
    PyMem_Free(outv);
    PyMem_Free(inv);
    PyMem_Free(kind);
    PyMem_Free(cv);
    PyMem_Free(entries);
    PyMem_Free(slots);
    PyMem_Free(hourly);
    PyMem_Free(hourly_run);
    PyMem_Free(hrow);
    PyMem_Free(hours);
    for (int k = 0; k < 3; k++)
        PyBuffer_Release(&views[k]);
    return result;
}

/* merge_deltas(deltas, ids, count, blocked, out, in_, first, last, facts, stored, merge)
 *   -> (new, roomy) | None
 *
 * The storing process's part of store.py Store._add_batch_deltas for the incidents of a
 * batch's deltas (ids, count, ... facts: the Deltas lists; ids, out, in_ and facts lists,
 * the others any sequences) already in the transaction's `deltas` (a dict by incident id
 * of dicts): adds "count" and "blocked", adds "bytes_out" and "bytes_in" (a None adds
 * nothing; to a None: the value; saturated to 64 bits), lowers "first" and raises "last",
 * and replaces "facts" by merge(theirs, the batch's) when the batch's are not None and not that object (merge:
 * batch.py merged_facts, a pure function of the two, called once a distinct pair here).
 * Values are added and compared as Python objects, as the Python code does (but counts
 * and times read in place from arrays, as pickled: added to an int in C while the sum fits
 * 64 bits, compared with a float in C, the same outcome); an error (of `+`, say)
 * propagates. Returns the indexes of the incidents that are not in `deltas`
 * (new: the caller makes them) and of those that are whose "evidence" has room: fewer
 * than EVIDENCE samples, and the incident not stored with that many
 * (stored.get(id).evidence: the caller adds samples). None when ids, out, in_ or facts
 * is not a list (the Python code then does it all). */

#define FACT_PAIRS 16 /* distinct (old, new) facts remembered a call: a batch has a few */

static PyObject *COUNT_KEY, *BLOCKED_KEY, *OUT_KEY, *IN_KEY, *FIRST_KEY, *LAST_KEY,
    *EVIDENCE_KEY;

/* d[key], borrowed, or NULL with KeyError set (or the lookup's error) */
static PyObject *
item_of(PyObject *d, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(d, key);
    if (value == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, key);
    return value;
}

/* d[key] = d[key] + add (with `or_none`, as for the byte sums: None + add is add, and a
 * sum beyond 64 bits is INT64_MAX (below: INT64_MIN), as batch.py _add; else None + add
 * raises as in Python); -1 on error */
static int
add_to(PyObject *d, PyObject *key, PyObject *add, int or_none)
{
    PyObject *had = item_of(d, key);
    if (had == NULL)
        return -1;
    PyObject *sum = or_none && had == Py_None ? Py_NewRef(add) : PyNumber_Add(had, add);
    if (sum == NULL)
        return -1;
    if (or_none && had != Py_None) {
        int overflow = 0;
        PyLong_AsLongLongAndOverflow(sum, &overflow); /* (an int: a byte sum is) */
        if (PyErr_Occurred()) {
            Py_DECREF(sum);
            return -1;
        }
        if (overflow)
            Py_SETREF(sum, PyLong_FromLongLong(overflow > 0 ? INT64_MAX : INT64_MIN));
        if (sum == NULL)
            return -1;
    }
    int failed = PyDict_SetItem(d, key, sum);
    Py_DECREF(sum);
    return failed;
}

/* d[key] = value when value `op` d[key] (Py_LT: lower it, Py_GT: raise it); -1 on error */
static int
move_to(PyObject *d, PyObject *key, PyObject *value, int op)
{
    PyObject *had = item_of(d, key);
    if (had == NULL)
        return -1;
    int beyond = PyObject_RichCompareBool(value, had, op);
    if (beyond <= 0)
        return beyond;
    return PyDict_SetItem(d, key, value);
}

/* d[key] = value, made by the caller (its reference taken; NULL: its error); -1 on error */
static int
set_made(PyObject *d, PyObject *key, PyObject *value)
{
    int failed = value == NULL || PyDict_SetItem(d, key, value) < 0;
    Py_XDECREF(value);
    return failed ? -1 : 0;
}

/* the k-th value of a count column (`view`: its int64, when an array; else NULL) added to
 * d[key] as add_to does (no or_none): in C when both are ints within 64 bits whose sum is
 * too, the int made once; -1 on error */
static int
add_count(PyObject *d, PyObject *key, PyObject *col, const Py_buffer *view, Py_ssize_t k)
{
    PyObject *add;
    if (view != NULL) {
        int64_t v = ((const int64_t *)view->buf)[k], had_v;
        PyObject *had = item_of(d, key);
        if (had == NULL)
            return -1;
        if (stored_int(had, &had_v) == 1 && !__builtin_add_overflow(had_v, v, &had_v))
            return set_made(d, key, PyLong_FromLongLong(had_v));
        add = PyLong_FromLongLong(v);
    }
    else
        add = PySequence_GetItem(col, k);
    int failed = add == NULL || add_to(d, key, add, 0) < 0;
    Py_XDECREF(add);
    return failed ? -1 : 0;
}

/* the k-th value of a time column (`view`: its doubles, when an array; else NULL) moved
 * into d[key] as move_to does: compared in C with a float there, made an object only when
 * it moves; -1 on error */
static int
move_time(PyObject *d, PyObject *key, PyObject *col, const Py_buffer *view, Py_ssize_t k,
          int op)
{
    PyObject *value;
    if (view != NULL) {
        double v = ((const double *)view->buf)[k];
        PyObject *had = item_of(d, key);
        if (had == NULL)
            return -1;
        if (PyFloat_CheckExact(had)) {
            double h = PyFloat_AS_DOUBLE(had);
            return (op == Py_LT ? v < h : v > h) ? set_made(d, key, PyFloat_FromDouble(v)) : 0;
        }
        value = PyFloat_FromDouble(v);
    }
    else
        value = PySequence_GetItem(col, k);
    int failed = value == NULL || move_to(d, key, value, op) < 0;
    Py_XDECREF(value);
    return failed ? -1 : 0;
}

/* whether an existing incident's evidence has room (see above): 1, 0, or -1 on error */
static int
has_room(PyObject *d, PyObject *iid, PyObject *stored)
{
    PyObject *evidence = item_of(d, EVIDENCE_KEY);
    if (evidence == NULL)
        return -1;
    Py_ssize_t have = PyObject_Length(evidence);
    if (have < 0)
        return -1;
    if (have >= EVIDENCE)
        return 0;
    PyObject *old = PyDict_GetItemWithError(stored, iid);
    if (old == NULL)
        return PyErr_Occurred() ? -1 : 1;
    PyObject *samples = PyObject_GetAttr(old, EVIDENCE_KEY);
    if (samples == NULL)
        return -1;
    have = PyObject_Length(samples);
    Py_DECREF(samples);
    return have < 0 ? -1 : have < EVIDENCE;
}

static PyObject *
merge_deltas(PyObject *self, PyObject *args)
{
    PyObject *deltas, *ids, *count, *blocked, *out, *in, *first, *last, *facts, *stored, *merge;
    if (!PyArg_ParseTuple(args, "O!OOOOOOOOO!O:merge_deltas", &PyDict_Type, &deltas, &ids,
                          &count, &blocked, &out, &in, &first, &last, &facts, &PyDict_Type,
                          &stored, &merge))
        return NULL;
    if (!PyList_CheckExact(ids) || !PyList_CheckExact(out) || !PyList_CheckExact(in) ||
        !PyList_CheckExact(facts))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(ids);
    if (PyList_GET_SIZE(out) != n || PyList_GET_SIZE(in) != n || PyList_GET_SIZE(facts) != n ||
        PySequence_Size(count) != n || PySequence_Size(blocked) != n ||
        PySequence_Size(first) != n || PySequence_Size(last) != n) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "merge_deltas: lists of other lengths");
        return NULL;
    }
    PyObject *pairs[FACT_PAIRS][3] = {{NULL}}; /* (old, new, merged): strong references */
    int npairs = 0, next_pair = 0;
    /* count, blocked, first, last read in place when they are arrays (as pickled) */
    PyObject *cols[4] = {count, blocked, first, last};
    Py_buffer views[4];
    const Py_buffer *in_place[4];
    for (int j = 0; j < 4; j++)
        in_place[j] = column_view(cols[j], j < 2 ? "q" : "d", n, &views[j]) ? &views[j] : NULL;
    PyObject *fresh = PyList_New(0), *roomy = PyList_New(0), *result = NULL;
    if (fresh == NULL || roomy == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *iid = PyList_GET_ITEM(ids, k);
        PyObject *d = PyDict_GetItemWithError(deltas, iid);
        if (d == NULL) {
            if (PyErr_Occurred())
                goto done;
            PyObject *index = PyLong_FromSsize_t(k);
            int failed = index == NULL || PyList_Append(fresh, index) < 0;
            Py_XDECREF(index);
            if (failed)
                goto done;
            continue;
        }
        if (!PyDict_Check(d)) {
            PyErr_SetString(PyExc_TypeError, "merge_deltas: a delta that is not a dict");
            goto done;
        }
        Py_INCREF(d); /* (setting its items may run code that drops it from deltas) */
        int room = has_room(d, iid, stored);
        if (room > 0) {
            PyObject *index = PyLong_FromSsize_t(k);
            room = index == NULL || PyList_Append(roomy, index) < 0 ? -1 : 0;
            Py_XDECREF(index);
        }
        if (room < 0) { /* (no other call with the error set) */
            Py_DECREF(d);
            goto done;
        }
        PyObject *sent = PyList_GET_ITEM(out, k), *received = PyList_GET_ITEM(in, k);
        int failed = add_count(d, COUNT_KEY, count, in_place[0], k) < 0 ||
                     add_count(d, BLOCKED_KEY, blocked, in_place[1], k) < 0 ||
                     (sent != Py_None && add_to(d, OUT_KEY, sent, 1) < 0) ||
                     (received != Py_None && add_to(d, IN_KEY, received, 1) < 0) ||
                     move_time(d, FIRST_KEY, first, in_place[2], k, Py_LT) < 0 ||
                     move_time(d, LAST_KEY, last, in_place[3], k, Py_GT) < 0;
        PyObject *theirs = Py_NewRef(PyList_GET_ITEM(facts, k)); /* (held: merge runs code) */
        if (!failed && theirs != Py_None) {
            PyObject *had = Py_XNewRef(item_of(d, FACTS_KEY));
            if (had == NULL)
                failed = 1;
            else if (had != theirs) {
                PyObject *merged = NULL;
                for (int j = 0; j < npairs && merged == NULL; j++)
                    if (pairs[j][0] == had && pairs[j][1] == theirs)
                        merged = pairs[j][2];
                if (merged == NULL) {
                    merged = PyObject_CallFunctionObjArgs(merge, had, theirs, NULL);
                    if (merged == NULL)
                        failed = 1;
                    else { /* remembered (round robin), the pair kept alive with it */
                        PyObject **pair = pairs[next_pair];
                        Py_XDECREF(pair[0]);
                        Py_XDECREF(pair[1]);
                        Py_XDECREF(pair[2]);
                        pair[0] = Py_NewRef(had);
                        pair[1] = Py_NewRef(theirs);
                        pair[2] = merged;
                        next_pair = (next_pair + 1) % FACT_PAIRS;
                        if (npairs < FACT_PAIRS)
                            npairs++;
                    }
                }
                failed = failed || PyDict_SetItem(d, FACTS_KEY, merged) < 0;
            }
            Py_XDECREF(had);
        }
        Py_DECREF(theirs);
        Py_DECREF(d);
        if (failed)
            goto done;
    }
    result = PyTuple_Pack(2, fresh, roomy);
done:
    for (int j = 0; j < 4; j++)
        if (in_place[j] != NULL)
            PyBuffer_Release(&views[j]);
    for (int j = 0; j < npairs; j++)
        for (int i = 0; i < 3; i++)
            Py_XDECREF(pairs[j][i]);
    Py_XDECREF(fresh);
    Py_XDECREF(roomy);
    return result;
}

/* Sums() -> batch.py RollupSums's sums, in C
 *
 * The roll-up rows of a transaction's batches summed in memory by the storing process:
 * per (context number, client number) the requests, bytes out and in (each with whether
 * any was not NULL), the least URL, the first and last time; per (context number, hour)
 * the requests and bytes. add(rollup, ctx, client) adds a batch.Rollup whose context and
 * client indexes `ctx` and `client` (lists of ints) number; rows() and hourly() give the
 * sums sorted by key as RollupSums's columns (arrays as bytes of int64/doubles, a bytes
 * column None when all NULL, bytes when none is, else a list). add checks all it reads
 * before it adds anything: a column of another type or size, an index out of range or a
 * URL that is neither str nor None raise (TypeError, ValueError, IndexError). Byte sums
 * saturate at INT64_MAX (see add_saturating); a count of requests beyond 64 bits (no
 * database holds that many rows) raises OverflowError, and so does every later call (add,
 * rows, hourly): the sums are then unusable (the key whose count overflowed is half added),
 * as the Python reference's exact counts are when bound (the transaction is aborted). */
typedef struct {
    int64_t a, b; /* the key: (ctx, client) or (ctx, hour) */
    int64_t requests, out, in;
    int has_out, has_in;
    PyObject *url; /* owned, or NULL */
    double first, last;
} Sum;

typedef struct {
    Sum *e;
    Py_ssize_t n;
    Py_ssize_t *slot; /* entry + 1, 0: free */
    size_t nslots;    /* a power of 2, at least twice n */
} Table;

typedef struct {
    PyObject_HEAD
    Table rows, hours;
    int overflowed; /* a sum went beyond 64 bits: the sums are wrong, every call raises */
} Sums;

static PyObject *ROLLUP_FIELDS[13]; /* the batch.Rollup attributes, interned */

static inline size_t
slot_hash(int64_t a, int64_t b, size_t mask)
{
    uint64_t h = (uint64_t)a * 0x9E3779B97F4A7C15ULL ^ (uint64_t)b * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL >> 32) & mask;
}

/* the entry of key (a, b), made (all zero, *fresh 1) when the table lacks it; NULL with
 * MemoryError set */
static Sum *
table_get(Table *t, int64_t a, int64_t b, int *fresh)
{
    if (2 * (size_t)(t->n + 1) > t->nslots) {
        size_t nslots = t->nslots ? 2 * t->nslots : 64;
        Sum *e = PyMem_Realloc(t->e, nslots / 2 * sizeof(Sum));
        if (e == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        t->e = e;
        Py_ssize_t *slot = PyMem_Calloc(nslots, sizeof(Py_ssize_t));
        if (slot == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (Py_ssize_t k = 0; k < t->n; k++) {
            size_t s = slot_hash(e[k].a, e[k].b, nslots - 1);
            while (slot[s])
                s = (s + 1) & (nslots - 1);
            slot[s] = k + 1;
        }
        PyMem_Free(t->slot);
        t->slot = slot;
        t->nslots = nslots;
    }
    size_t mask = t->nslots - 1, s = slot_hash(a, b, mask);
    for (; t->slot[s]; s = (s + 1) & mask) {
        Sum *e = &t->e[t->slot[s] - 1];
        if (e->a == a && e->b == b) {
            *fresh = 0;
            return e;
        }
    }
    t->slot[s] = ++t->n;
    Sum *e = &t->e[t->n - 1];
    memset(e, 0, sizeof(Sum));
    e->a = a;
    e->b = b;
    *fresh = 1;
    return e;
}

static void
table_free(Table *t)
{
    for (Py_ssize_t k = 0; k < t->n; k++)
        Py_XDECREF(t->e[k].url);
    PyMem_Free(t->e);
    PyMem_Free(t->slot);
    memset(t, 0, sizeof(Table));
}

/* a column of n ints (an array of typecode i or q, or a list of ints and, `nullable`,
 * None: has[k] 0) into v; None (nullable): all NULL. 0 with an error set */
static int
int_column(PyObject *col, Py_ssize_t n, int64_t *v, char *has, int nullable)
{
    if (col == Py_None && nullable) {
        memset(has, 0, (size_t)n);
        return 1;
    }
    if (PyList_CheckExact(col)) {
        if (PyList_GET_SIZE(col) != n)
            goto size;
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *x = PyList_GET_ITEM(col, k);
            has[k] = x != Py_None;
            if (!has[k] && nullable)
                continue;
            if (!PyLong_Check(x))
                goto type;
            int overflow = 0;
            v[k] = PyLong_AsLongLongAndOverflow(x, &overflow);
            if (overflow) {
                PyErr_SetString(PyExc_OverflowError, "a roll-up value beyond 64 bits");
                return 0;
            }
            if (v[k] == -1 && PyErr_Occurred())
                return 0;
        }
        return 1;
    }
    if (!PyObject_CheckBuffer(col))
        goto type;
    Py_buffer view;
    if (PyObject_GetBuffer(col, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return 0;
    int ok = 0;
    const char *f = view.format ? view.format : "B";
    if (view.ndim != 1 || view.shape[0] != n)
        PyErr_SetString(PyExc_ValueError, "a roll-up column of another size");
    else if (strcmp(f, "i") == 0) {
        for (Py_ssize_t k = 0; k < n; k++)
            v[k] = ((const int *)view.buf)[k];
        ok = 1;
    }
    else if (strcmp(f, "q") == 0) {
        memcpy(v, view.buf, (size_t)n * sizeof(int64_t));
        ok = 1;
    }
    else
        PyErr_SetString(PyExc_TypeError, "a roll-up column of another type");
    PyBuffer_Release(&view);
    if (ok)
        memset(has, 1, (size_t)n);
    return ok;
size:
    PyErr_SetString(PyExc_ValueError, "a roll-up column of another size");
    return 0;
type:
    PyErr_SetString(PyExc_TypeError, "a roll-up column of another type");
    return 0;
}

/* a column of n doubles (an array of typecode d) into v; 0 with an error set */
static int
float_column(PyObject *col, Py_ssize_t n, double *v)
{
    Py_buffer view;
    if (!PyObject_CheckBuffer(col)) {
        PyErr_SetString(PyExc_TypeError, "a roll-up column of another type");
        return 0;
    }
    if (PyObject_GetBuffer(col, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return 0;
    int ok = view.ndim == 1 && view.shape[0] == n && view.format && strcmp(view.format, "d") == 0;
    if (ok)
        memcpy(v, view.buf, (size_t)n * sizeof(double));
    else
        PyErr_SetString(PyExc_TypeError, "a roll-up column of another type or size");
    PyBuffer_Release(&view);
    return ok;
}

/* adds v to a nullable byte sum (given: v is not NULL), saturating at INT64_MAX (below:
 * INT64_MIN) as batch._add and store.SATURATED_SUM do (see observation.MAX_COUNT) */
static inline void
add_saturating(int64_t *sum, int *has, int64_t v, char given)
{
    if (given && !add_checked(sum, has, v))
        *sum = v > 0 ? INT64_MAX : INT64_MIN;
}

static PyObject *
sums_overflowed(void)
{
    PyErr_SetString(PyExc_OverflowError, "a roll-up sum beyond 64 bits");
    return NULL;
}

static PyObject *
Sums_add(Sums *self, PyObject *args)
{
    PyObject *rollup, *ctx, *client, *result = NULL, *f[13] = {NULL};
    int64_t *numbers = NULL, *v = NULL;
    double *d = NULL;
    char *has = NULL;
    if (self->overflowed)
        return sums_overflowed();
    if (!PyArg_ParseTuple(args, "OO!O!:add", &rollup, &PyList_Type, &ctx, &PyList_Type, &client))
        return NULL;
    for (int j = 0; j < 13; j++)
        if ((f[j] = PyObject_GetAttr(rollup, ROLLUP_FIELDS[j])) == NULL)
            goto done;
    Py_ssize_t nc = PyList_GET_SIZE(ctx), nw = PyList_GET_SIZE(client);
    Py_ssize_t n = PyObject_Length(f[0]), nh = PyObject_Length(f[9]);
    if (n < 0 || nh < 0)
        goto done;
    /* the columns of the rows (ctx, client, requests, out, in: n int64 each; first and
     * last: n doubles each), then of the hourly rows (ctx, hour, requests, out, in) */
    numbers = PyMem_Malloc((size_t)(nc + nw + 1) * sizeof(int64_t));
    v = PyMem_Malloc((size_t)(5 * n + 5 * nh + 1) * sizeof(int64_t));
    d = PyMem_Malloc((size_t)(2 * n + 1) * sizeof(double));
    has = PyMem_Malloc((size_t)(5 * n + 5 * nh + 1));
    if (numbers == NULL || v == NULL || d == NULL || has == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nc + nw; k++) {
        PyObject *x = PyList_GET_ITEM(k < nc ? ctx : client, k < nc ? k : k - nc);
        if (!PyLong_Check(x)) {
            PyErr_SetString(PyExc_TypeError, "a context or client number that is not an int");
            goto done;
        }
        numbers[k] = PyLong_AsLongLong(x);
        if (numbers[k] == -1 && PyErr_Occurred())
            goto done;
    }
    int64_t *hv = v + 5 * n;
    char *hh = has + 5 * n;
    for (int j = 0; j < 5; j++)
        if (!int_column(f[j], n, v + j * n, has + j * n, j >= 3) ||
            !int_column(f[8 + j], nh, hv + j * nh, hh + j * nh, j >= 3))
            goto done;
    if (!float_column(f[6], n, d) || !float_column(f[7], n, d + n))
        goto done;
    PyObject *url = f[5];
    if (url != Py_None) {
        if (!PyList_CheckExact(url) || PyList_GET_SIZE(url) != n) {
            PyErr_SetString(PyExc_TypeError, "a roll-up URL column that is not a list of n");
            goto done;
        }
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *u = PyList_GET_ITEM(url, k);
            if (u != Py_None && !PyUnicode_CheckExact(u)) {
                PyErr_SetString(PyExc_TypeError, "a roll-up URL that is not text");
                goto done;
            }
        }
    }
    for (Py_ssize_t k = 0; k < n; k++)
        if (v[k] < 0 || v[k] >= nc || v[n + k] < 0 || v[n + k] >= nw)
            goto index;
    for (Py_ssize_t k = 0; k < nh; k++)
        if (hv[k] < 0 || hv[k] >= nc)
            goto index;
    for (Py_ssize_t k = 0; k < n; k++) {
        int fresh;
        Sum *e = table_get(&self->rows, numbers[v[k]], numbers[nc + v[n + k]], &fresh);
        if (e == NULL)
            goto done;
        double first = d[k], last = d[n + k];
        if (fresh || first < e->first)
            e->first = first;
        if (fresh || last > e->last)
            e->last = last;
        if (__builtin_add_overflow(e->requests, v[2 * n + k], &e->requests))
            goto overflow;
        add_saturating(&e->out, &e->has_out, v[3 * n + k], has[3 * n + k]);
        add_saturating(&e->in, &e->has_in, v[4 * n + k], has[4 * n + k]);
        PyObject *u = url == Py_None ? Py_None : PyList_GET_ITEM(url, k);
        if (u != Py_None && (e->url == NULL || PyUnicode_Compare(u, e->url) < 0))
            Py_XSETREF(e->url, Py_NewRef(u)); /* (exact str: no error to compare) */
    }
    for (Py_ssize_t k = 0; k < nh; k++) {
        int fresh;
        Sum *e = table_get(&self->hours, numbers[hv[k]], hv[nh + k], &fresh);
        if (e == NULL)
            goto done;
        if (__builtin_add_overflow(e->requests, hv[2 * nh + k], &e->requests))
            goto overflow;
        add_saturating(&e->out, &e->has_out, hv[3 * nh + k], hh[3 * nh + k]);
        add_saturating(&e->in, &e->has_in, hv[4 * nh + k], hh[4 * nh + k]);
    }
    result = Py_NewRef(Py_None);
    goto done;
index:
    PyErr_SetString(PyExc_IndexError, "a roll-up index out of range");
    goto done;
overflow:
    self->overflowed = 1;
    sums_overflowed();
done:
    PyMem_Free(numbers);
    PyMem_Free(v);
    PyMem_Free(d);
    PyMem_Free(has);
    for (int j = 0; j < 13; j++)
        Py_XDECREF(f[j]);
    return result;
}

static int
sum_cmp(const void *x, const void *y)
{
    const Sum *a = *(Sum *const *)x, *b = *(Sum *const *)y;
    if (a->a != b->a)
        return a->a < b->a ? -1 : 1;
    return a->b < b->b ? -1 : a->b > b->b;
}

/* a nullable sum column: None when all NULL, bytes of int64 when none is, else a list */
static PyObject *
nullable_of(Sum *const *e, Py_ssize_t n, int in)
{
    Py_ssize_t given = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        given += in ? e[k]->has_in : e[k]->has_out;
    if (given == 0)
        Py_RETURN_NONE;
    if (given == n) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
        if (b != NULL)
            for (Py_ssize_t k = 0; k < n; k++)
                ((int64_t *)PyBytes_AS_STRING(b))[k] = in ? e[k]->in : e[k]->out;
        return b;
    }
    PyObject *list = PyList_New(n);
    for (Py_ssize_t k = 0; list != NULL && k < n; k++) {
        PyObject *x = (in ? e[k]->has_in : e[k]->has_out)
                          ? PyLong_FromLongLong(in ? e[k]->in : e[k]->out)
                          : Py_NewRef(Py_None);
        if (x == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, x);
    }
    return list;
}

/* the sums of a table sorted by key: (a, b, requests, out, in) and, `rows`, (url, first,
 * last) */
static PyObject *
sums_out(Table *t, int rows)
{
    Py_ssize_t n = t->n, width = rows ? 8 : 5;
    Sum **e = PyMem_Malloc((size_t)(n + 1) * sizeof(Sum *));
    if (e == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t k = 0; k < n; k++)
        e[k] = &t->e[k];
    qsort(e, (size_t)n, sizeof(Sum *), sum_cmp);
    PyObject *f[8] = {NULL}, *result = NULL;
    for (int j = 0; j < 3; j++)
        f[j] = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    f[3] = nullable_of(e, n, 0);
    f[4] = nullable_of(e, n, 1);
    int any_url = 0;
    if (rows) {
        for (Py_ssize_t k = 0; k < n && !any_url; k++)
            any_url = e[k]->url != NULL;
        f[5] = any_url ? PyList_New(n) : Py_NewRef(Py_None);
        f[6] = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
        f[7] = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    }
    for (int j = 0; j < width; j++)
        if (f[j] == NULL)
            goto done;
    int64_t *a = (int64_t *)PyBytes_AS_STRING(f[0]), *b = (int64_t *)PyBytes_AS_STRING(f[1]),
            *q = (int64_t *)PyBytes_AS_STRING(f[2]);
    for (Py_ssize_t k = 0; k < n; k++) {
        a[k] = e[k]->a;
        b[k] = e[k]->b;
        q[k] = e[k]->requests;
        if (rows) {
            ((double *)PyBytes_AS_STRING(f[6]))[k] = e[k]->first;
            ((double *)PyBytes_AS_STRING(f[7]))[k] = e[k]->last;
            if (any_url)
                PyList_SET_ITEM(f[5], k, Py_NewRef(e[k]->url ? e[k]->url : Py_None));
        }
    }
    result = PyTuple_New(width);
    for (int j = 0; result != NULL && j < width; j++)
        PyTuple_SET_ITEM(result, j, Py_NewRef(f[j]));
done:
    for (int j = 0; j < 8; j++)
        Py_XDECREF(f[j]);
    PyMem_Free(e);
    return result;
}

static PyObject *
Sums_rows(Sums *self, PyObject *unused)
{
    if (self->overflowed)
        return sums_overflowed();
    return sums_out(&self->rows, 1);
}

static PyObject *
Sums_hourly(Sums *self, PyObject *unused)
{
    if (self->overflowed)
        return sums_overflowed();
    return sums_out(&self->hours, 0);
}

static PyObject *
Sums_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Sums() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0); /* (zeroed: empty tables) */
}

static void
Sums_dealloc(Sums *self)
{
    table_free(&self->rows);
    table_free(&self->hours);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
Sums_len(Sums *self)
{
    return self->rows.n + self->hours.n;
}

static PyMethodDef Sums_methods[] = {
    {"add", (PyCFunction)Sums_add, METH_VARARGS, "Add a batch.Rollup (see above)."},
    {"rows", (PyCFunction)Sums_rows, METH_NOARGS, "The sums per context and client."},
    {"hourly", (PyCFunction)Sums_hourly, METH_NOARGS, "The sums per context and hour."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Sums_as_sequence = {
    .sq_length = (lenfunc)Sums_len,
};

static PyTypeObject SumsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "monitor._batchscan.Sums",
    .tp_doc = "Sums() -> batch.py RollupSums's sums (see above).",
    .tp_basicsize = sizeof(Sums),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Sums_new,
    .tp_dealloc = (destructor)Sums_dealloc,
    .tp_methods = Sums_methods,
    .tp_as_sequence = &Sums_as_sequence,
};

/* link_packs(incidents, obs) -> (incidents, firsts, texts) | None
 *
 * batch.py _link_packs of a transaction's hit links: pair i links incident incidents[i]
 * and observation row obs[i] (array.array of typecode i, l or q, of one length). The
 * distinct pairs, sorted, as one pack per incident and block of PACK_ROWS rows: the
 * incident, the block's first row `first` and the JSON array of its rows less `first`,
 * ascending ("[2,3,7]", json.dumps' text with separators "," and ":"). The pairs are
 * sorted packed into one number each, (incident - lo) * span + row - low (lo, low: the
 * least incident and row; span: the rows' range), below 2**62. None when it leaves them to the Python code (another type,
 * arrays of other lengths, numbers too far apart to pack: the Python code then says what
 * they make, or raises). */

#define MAX_PACKED (INT64_C(1) << 62)
/* batch.py PACK_ROWS: a pack holds one incident's rows of one block of this many rows */
#define PACK_ROWS (INT64_C(1) << 20)
/* the first row of a row's block (its low bits cleared: floor, negative rows too) */
#define PACK_BLOCK(row) ((int64_t)((uint64_t)(row) & ~(uint64_t)(PACK_ROWS - 1)))

/* the row of a pair packed by link_packs (`low`, `span`: as it packs them) */
static inline int64_t
packed_row(uint64_t packed, int64_t low, uint64_t span)
{
    return (int64_t)((uint64_t)low + packed % span);
}
#define RADIX_BITS 11

static PyTypeObject *ARRAY; /* array.array */

/* an array.array of machine integers as int64 (a copy); NULL (no error set) when `obj` is
 * not one, NULL with an error set on one */
static int64_t *
int_array(PyObject *obj, Py_ssize_t *n)
{
    if (!Py_IS_TYPE(obj, ARRAY)) /* (not a subclass: its buffer may be another's) */
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return NULL;
    }
    const char *f = view.format ? view.format : "B";
    int64_t *v = NULL;
    if (strlen(f) == 1 && strchr("ilq", f[0]) != NULL && view.itemsize > 0) {
        *n = view.len / view.itemsize;
        v = PyMem_Malloc((*n > 0 ? *n : 1) * sizeof(int64_t));
        if (v == NULL)
            PyErr_NoMemory();
        else
            for (Py_ssize_t i = 0; i < *n; i++)
                v[i] = f[0] == 'i'   ? ((const int *)view.buf)[i]
                       : f[0] == 'l' ? ((const long *)view.buf)[i]
                                     : ((const long long *)view.buf)[i];
    }
    PyBuffer_Release(&view);
    return v;
}

/* sort v (n values, none above `most`) with tmp as scratch, least significant digits first:
   only the digits `most` has are sorted on (link_packs' pairs, below 2**62; merged_new's
   ids with the sign bit flipped, all 64 bits) */
static void
radix_sort(uint64_t *v, uint64_t *tmp, Py_ssize_t n, uint64_t most)
{
    size_t counts[1 << RADIX_BITS];
    for (int shift = 0; shift < 64 && (most >> shift) != 0; shift += RADIX_BITS) {
        memset(counts, 0, sizeof counts);
        for (Py_ssize_t i = 0; i < n; i++)
            counts[(v[i] >> shift) & ((1 << RADIX_BITS) - 1)]++;
        size_t at = 0;
        for (int d = 0; d < (1 << RADIX_BITS); d++) {
            size_t c = counts[d];
            counts[d] = at;
            at += c;
        }
        for (Py_ssize_t i = 0; i < n; i++)
            tmp[counts[(v[i] >> shift) & ((1 << RADIX_BITS) - 1)]++] = v[i];
        memcpy(v, tmp, n * sizeof *v);
    }
}

/* the JSON array of n values, as json.dumps writes a list of ints with separators "," and
   ":" */
static PyObject *
json_of(const uint64_t *v, Py_ssize_t n)
{
    char *text = PyMem_Malloc(n * 21 + 2), *p = text;
    if (text == NULL)
        return PyErr_NoMemory();
    *p++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        char digits[24];
        int d = 0;
        uint64_t x = v[i];
        do {
            digits[d++] = (char)('0' + x % 10);
            x /= 10;
        } while (x);
        while (d)
            *p++ = digits[--d];
    }
    *p++ = ']';
    PyObject *s = PyUnicode_DecodeASCII(text, p - text, NULL);
    PyMem_Free(text);
    return s;
}

/* link_pairs(key, of, row, first) -> (incidents, obs) | None
 *
 * batch.py link_pairs's pairs of a batch's hit links: incident key[of[i]] and row
 * first + row[i] per pair, as the bytes of two arrays of int64 (array "q", native order)
 * to append. `key` a list of exact ints, `of` and `row` array.array of typecode i, l or q
 * of one length, `first` an exact int. None when it leaves them to the Python code
 * (another type, an index out of range or negative, a number beyond 64 bits: the Python
 * code then says what they make, or raises). */
static PyObject *
link_pairs(PyObject *self, PyObject *args)
{
    PyObject *key, *ofobj, *rowobj, *firstobj;
    if (!PyArg_ParseTuple(args, "OOOO:link_pairs", &key, &ofobj, &rowobj, &firstobj))
        return NULL;
    int64_t first;
    if (!PyList_CheckExact(key) || !int64_of(firstobj, &first))
        Py_RETURN_NONE;
    Py_ssize_t nkey = PyList_GET_SIZE(key), n = 0, nrow = 0;
    int64_t *keys = PyMem_Malloc((nkey > 0 ? nkey : 1) * sizeof(int64_t)), *of = NULL, *row = NULL;
    PyObject *result = NULL, *incidents = NULL, *obs = NULL;
    if (keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nkey; k++)
        if (!int64_of(PyList_GET_ITEM(key, k), &keys[k]))
            goto done;
    of = int_array(ofobj, &n);
    if (of == NULL)
        goto done;
    row = int_array(rowobj, &nrow);
    if (row == NULL || nrow != n)
        goto done;
    incidents = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    obs = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (incidents == NULL || obs == NULL)
        goto done;
    int64_t *to = (int64_t *)PyBytes_AS_STRING(incidents), *at = (int64_t *)PyBytes_AS_STRING(obs);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (of[i] < 0 || of[i] >= nkey || __builtin_add_overflow(first, row[i], &at[i]))
            goto done;
        to[i] = keys[of[i]];
    }
    result = PyTuple_Pack(2, incidents, obs);
done:
    PyMem_Free(keys);
    PyMem_Free(of);
    PyMem_Free(row);
    Py_XDECREF(incidents);
    Py_XDECREF(obs);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

/* append an int64 to a list: 0, else -1 with an error set */
static int
append_int64(PyObject *list, int64_t value)
{
    PyObject *x = PyLong_FromLongLong(value);
    int failed = x == NULL || PyList_Append(list, x) < 0;
    Py_XDECREF(x);
    return failed ? -1 : 0;
}

static PyObject *
link_packs(PyObject *self, PyObject *args)
{
    PyObject *incobj, *obsobj;
    if (!PyArg_ParseTuple(args, "OO:link_packs", &incobj, &obsobj))
        return NULL;
    Py_ssize_t n = 0, nobs = 0;
    int64_t *inc = NULL, *obs = NULL;
    uint64_t *packed = NULL, *tmp = NULL;
    PyObject *result = NULL, *incidents = NULL, *firsts = NULL, *texts = NULL;
    int fallback = 1;
    inc = int_array(incobj, &n);
    if (inc == NULL)
        goto done;
    obs = int_array(obsobj, &nobs);
    if (obs == NULL || nobs != n)
        goto done;
    int64_t lo = INT64_MAX, hi = INT64_MIN, low = INT64_MAX, high = INT64_MIN;
    for (Py_ssize_t i = 0; i < n; i++) {
        lo = inc[i] < lo ? inc[i] : lo;
        hi = inc[i] > hi ? inc[i] : hi;
        low = obs[i] < low ? obs[i] : low;
        high = obs[i] > high ? obs[i] : high;
    }
    uint64_t span = 1;
    if (n > 0) { /* (hi - lo + 1) * span below MAX_PACKED, without overflow */
        if ((uint64_t)hi - (uint64_t)lo >= (uint64_t)MAX_PACKED ||
            (uint64_t)high - (uint64_t)low >= (uint64_t)MAX_PACKED)
            goto done;
        uint64_t incs = (uint64_t)hi - (uint64_t)lo + 1;
        span = (uint64_t)high - (uint64_t)low + 1;
        if (incs > (uint64_t)MAX_PACKED / span || incs * span >= (uint64_t)MAX_PACKED)
            goto done;
    }
    packed = PyMem_Malloc((n > 0 ? n : 1) * sizeof(uint64_t));
    tmp = PyMem_Malloc((n > 0 ? n : 1) * sizeof(uint64_t));
    if (packed == NULL || tmp == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t most = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        packed[i] = ((uint64_t)inc[i] - (uint64_t)lo) * span + ((uint64_t)obs[i] - (uint64_t)low);
        most |= packed[i];
    }
    radix_sort(packed, tmp, n, most);
    fallback = 0;
    incidents = PyList_New(0);
    firsts = PyList_New(0);
    texts = PyList_New(0);
    if (incidents == NULL || firsts == NULL || texts == NULL)
        goto done;
    for (Py_ssize_t at = 0; at < n;) { /* a pack: one incident's rows in one block, tmp their
                                           offsets from the block's first row */
        uint64_t incident = packed[at] / span;
        int64_t block = PACK_BLOCK(packed_row(packed[at], low, span));
        Py_ssize_t k = 0;
        for (; at < n && packed[at] / span == incident; at++) {
            int64_t row = packed_row(packed[at], low, span);
            if (PACK_BLOCK(row) != block)
                break;
            if (k == 0 || packed[at] != packed[at - 1])
                tmp[k++] = (uint64_t)row - (uint64_t)block;
        }
        PyObject *text = json_of(tmp, k);
        int failed = text == NULL || PyList_Append(texts, text) < 0 ||
                     append_int64(incidents, (int64_t)((uint64_t)lo + incident)) < 0 ||
                     append_int64(firsts, block) < 0;
        Py_XDECREF(text);
        if (failed)
            goto done;
    }
    result = PyTuple_Pack(3, incidents, firsts, texts);
done:
    PyMem_Free(inc);
    PyMem_Free(obs);
    PyMem_Free(packed);
    PyMem_Free(tmp);
    Py_XDECREF(incidents);
    Py_XDECREF(firsts);
    Py_XDECREF(texts);
    if (result == NULL && fallback && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

/* merged_new(hour, run) -> array | None
 * known_in(hour, run) -> list
 *
 * The ids of one hour of log time the scanner numbers identical records by (batch.py
 * merged_new and known_in, for scanner.py _Hour): `hour` an array.array of typecode q,
 * sorted and without copies, `run` one of typecode q. merged_new: a new array (typecode
 * q) of hour's and run's ids, sorted, when run's are distinct and none is in hour, else
 * None; known_in: per id of run, whether hour has it (True or False). Either raises
 * TypeError when given another object (the Python code makes the arrays). */

#define SIGN_BIT (UINT64_C(1) << 63) /* flipped: signed order is unsigned order */

/* a view of an array.array of typecode q: 0, else -1 with TypeError set */
static int
q_view(PyObject *obj, Py_buffer *view)
{
    if (Py_IS_TYPE(obj, ARRAY) &&
        PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
        if (view->format != NULL && strcmp(view->format, "q") == 0 &&
            view->itemsize == (Py_ssize_t)sizeof(int64_t))
            return 0;
        PyBuffer_Release(view);
    }
    PyErr_Clear();
    PyErr_SetString(PyExc_TypeError, "an array.array of typecode 'q' is required");
    return -1;
}

/* both views and their lengths (ids), or -1 with TypeError set (neither held) */
static int
q_views(PyObject *args, const char *format, Py_buffer *hour, Py_buffer *run, Py_ssize_t *n,
        Py_ssize_t *m)
{
    PyObject *hourobj, *runobj;
    if (!PyArg_ParseTuple(args, format, &hourobj, &runobj) || q_view(hourobj, hour) < 0)
        return -1;
    if (q_view(runobj, run) < 0) {
        PyBuffer_Release(hour);
        return -1;
    }
    *n = hour->len / (Py_ssize_t)sizeof(int64_t);
    *m = run->len / (Py_ssize_t)sizeof(int64_t);
    return 0;
}

/* whether sorted v[0..n) has x */
static int
has_id(const int64_t *v, Py_ssize_t n, int64_t x)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == x;
}

static PyObject *
merged_new(PyObject *self, PyObject *args)
{
    Py_buffer hv, rv;
    Py_ssize_t n, m;
    if (q_views(args, "OO:merged_new", &hv, &rv, &n, &m) < 0)
        return NULL;
    const int64_t *hour = hv.buf, *given = rv.buf;
    uint64_t *run = PyMem_Malloc((m > 0 ? m : 1) * sizeof(uint64_t));
    uint64_t *tmp = PyMem_Malloc((m > 0 ? m : 1) * sizeof(uint64_t));
    PyObject *bytes = NULL, *result = NULL;
    int copy = 0; /* the run has a copy: None */
    if (run == NULL || tmp == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint64_t most = 0;
    for (Py_ssize_t j = 0; j < m; j++)
        most |= run[j] = (uint64_t)given[j] ^ SIGN_BIT;
    radix_sort(run, tmp, m, most);
    for (Py_ssize_t j = 1; j < m && !copy; j++)
        copy = run[j] == run[j - 1]; /* a copy within the run */
    if (copy)
        goto done;
    bytes = PyBytes_FromStringAndSize(NULL, (n + m) * (Py_ssize_t)sizeof(int64_t));
    if (bytes == NULL)
        goto done;
    int64_t *out = (int64_t *)PyBytes_AS_STRING(bytes);
    Py_ssize_t i = 0, j = 0, k = 0;
    while (i < n && j < m) {
        int64_t x = (int64_t)(run[j] ^ SIGN_BIT);
        if (hour[i] < x)
            out[k++] = hour[i++];
        else if ((copy = hour[i] == x)) /* a copy of an id the hour has */
            goto done;
        else {
            out[k++] = x;
            j++;
        }
    }
    while (i < n)
        out[k++] = hour[i++];
    while (j < m)
        out[k++] = (int64_t)(run[j++] ^ SIGN_BIT);
    result = PyObject_CallFunction((PyObject *)ARRAY, "sO", "q", bytes);
done:
    PyMem_Free(run);
    PyMem_Free(tmp);
    Py_XDECREF(bytes);
    PyBuffer_Release(&hv);
    PyBuffer_Release(&rv);
    return copy ? Py_NewRef(Py_None) : result;
}

/* distinct_ids(ids) -> bool: whether no value of `ids` (an array.array of typecode q: a
 * batch's id column, batch.py distinct_ids) is there twice, by an open-addressing hash set
 * of the values: no Python object per id, no sort. TypeError for other objects; None when
 * a look-up probes more than DISTINCT_PROBES slots (ids chosen to collide: Python's set,
 * whose hash this is not, answers then, in linear time). */
#define DISTINCT_PROBES 64
static PyObject *
distinct_ids(PyObject *self, PyObject *obj)
{
    Py_buffer view;
    if (q_view(obj, &view) < 0)
        return NULL;
    const int64_t *ids = view.buf;
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(int64_t);
    size_t size = 16;
    int bits = 4;
    while (size < 2 * (size_t)n) {
        size <<= 1;
        bits++;
    }
    int64_t *slot = PyMem_Malloc(size * sizeof(int64_t));
    unsigned char *used = PyMem_Calloc(size, 1);
    int distinct = 1;
    if (slot == NULL || used == NULL) {
        PyMem_Free(slot);
        PyMem_Free(used);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    int crowded = 0;
    for (Py_ssize_t j = 0; j < n && distinct && !crowded; j++) {
        size_t at = (size_t)(((uint64_t)ids[j] * 0x9E3779B97F4A7C15u) >> (64 - bits));
        int probes = 0;
        while (used[at] && slot[at] != ids[j] && !(crowded = ++probes > DISTINCT_PROBES))
            at = (at + 1) & (size - 1);
        distinct = !used[at];
        used[at] = 1;
        slot[at] = ids[j];
    }
    PyMem_Free(slot);
    PyMem_Free(used);
    PyBuffer_Release(&view);
    return crowded ? Py_NewRef(Py_None) : PyBool_FromLong(distinct);
}

static PyObject *
known_in(PyObject *self, PyObject *args)
{
    Py_ssize_t n, m;
    Py_buffer hv, rv;
    PyObject *known = NULL;
    if (q_views(args, "OO:known_in", &hv, &rv, &n, &m) == 0) {
        const int64_t *hour = hv.buf, *run = rv.buf;
        known = PyList_New(m);
        for (Py_ssize_t j = 0; known != NULL && j < m; j++)
            PyList_SET_ITEM(known, j, PyBool_FromLong(has_id(hour, n, run[j])));
        PyBuffer_Release(&hv);
        PyBuffer_Release(&rv);
    }
    return known;
}

static PyMethodDef methods[] = {
    {"batch_rows", batch_rows, METH_VARARGS, "BatchBuilder.batch's lists (see above)."},
    {"group_tally", group_tally, METH_VARARGS, "Batch.made's groups and deltas (see above)."},
    {"merge_deltas", merge_deltas, METH_VARARGS, "Store._add_batch_deltas's sums (see above)."},
    {"distinct_ids", distinct_ids, METH_O, "batch.py distinct_ids of an array of int64."},
    {"link_pairs", link_pairs, METH_VARARGS, "batch.py link_pairs's pairs (see above), or None."},
    {"link_packs", link_packs, METH_VARARGS, "batch.py _link_packs (see above), or None."},
    {"hour_runs", hour_runs, METH_O, "batch.py _hour_runs of floats (a list or array), or None."},
    {"packed_groups", packed_groups, METH_O, "batch.py _packed_groups (see above), or None."},
    {"rollup", rollup, METH_VARARGS, "batch.py rollup_of's Rollup fields (see above)."},
    {"stream_refs", stream_refs, METH_VARARGS, "BatchStream._refs (see above), or None."},
    {"row_values", row_values, METH_VARARGS, "batch.py _row_values (see above), or None."},
    {"merged_new", merged_new, METH_VARARGS, "batch.py merged_new (see above)."},
    {"known_in", known_in, METH_VARARGS, "batch.py known_in (see above)."},
    {NULL, NULL, 0, NULL},
};

ACCEL_MODULE("monitor._batchscan", "The per-batch work of monitor/batch.py in C.");

PyMODINIT_FUNC
PyInit__batchscan(void)
{
    ID_KEY = PyUnicode_InternFromString("id");
    FACTS_KEY = PyUnicode_InternFromString("facts");
    COUNT_KEY = PyUnicode_InternFromString("count");
    BLOCKED_KEY = PyUnicode_InternFromString("blocked");
    OUT_KEY = PyUnicode_InternFromString("bytes_out");
    IN_KEY = PyUnicode_InternFromString("bytes_in");
    FIRST_KEY = PyUnicode_InternFromString("first");
    LAST_KEY = PyUnicode_InternFromString("last");
    EVIDENCE_KEY = PyUnicode_InternFromString("evidence");
    if (ID_KEY == NULL || FACTS_KEY == NULL || COUNT_KEY == NULL || BLOCKED_KEY == NULL ||
        OUT_KEY == NULL || IN_KEY == NULL || FIRST_KEY == NULL || LAST_KEY == NULL ||
        EVIDENCE_KEY == NULL)
        return NULL;
    static const char *const fields[13] = {
        "ctx", "client", "requests", "bytes_out", "bytes_in", "url", "first_ts", "last_ts",
        "hour_ctx", "hour", "hour_requests", "hour_out", "hour_in"};
    for (int j = 0; j < 13; j++)
        if ((ROLLUP_FIELDS[j] = PyUnicode_InternFromString(fields[j])) == NULL)
            return NULL;
    if (PyType_Ready(&SumsType) < 0)
        return NULL;
    PyObject *arrays = PyImport_ImportModule("array");
    ARRAY = arrays ? (PyTypeObject *)PyObject_GetAttrString(arrays, "array") : NULL;
    Py_XDECREF(arrays);
    if (ARRAY == NULL)
        return NULL;
    if (!PyType_Check(ARRAY)) {
        PyErr_SetString(PyExc_ImportError, "array.array is not a type");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    /* 8: stream_refs, merged_new, known_in; Sums and merge_deltas saturate byte sums at
       INT64_MAX (Sums raised OverflowError); 9: distinct_ids; 10: row_values; 11: both;
       12: link_pairs and link_packs instead of packed_links */
    if (m != NULL && (PyModule_AddIntConstant(m, "ABI", 12) < 0 ||
                      PyModule_AddObjectRef(m, "Sums", (PyObject *)&SumsType) < 0))
        Py_CLEAR(m);
    return m;
}
