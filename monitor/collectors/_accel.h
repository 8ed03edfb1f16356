/* What the C accelerators (monitor/collectors/_*.c, see monitor/accel.py) share. */
#ifndef APIWATCH_ACCEL_H
#define APIWATCH_ACCEL_H

/* The definition (`module`, for PyModule_Create) of accelerator module `name`, whose one
 * function is `fn` (a C function of that name, with METH_ flags `flags`) */
#define ACCEL_MODULE(name, doc, fn, flags, fn_doc)                                             \
    static PyMethodDef methods[] = {                                                           \
        {#fn, (PyCFunction)(void (*)(void))fn, flags, fn_doc},                                 \
        {NULL, NULL, 0, NULL},                                                                 \
    };                                                                                         \
    static struct PyModuleDef module = {                                                       \
        PyModuleDef_HEAD_INIT, name, doc, -1, methods, NULL, NULL, NULL, NULL,                 \
    }

#endif
