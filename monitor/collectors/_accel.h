/* What the C accelerators (monitor/collectors/_*.c, see monitor/accel.py) share. */
#ifndef APIWATCH_ACCEL_H
#define APIWATCH_ACCEL_H

/* `module`, the definition of accelerator module `name` (for PyModule_Create), whose
 * functions are the including file's `methods` */
#define ACCEL_MODULE(name, doc)                                                                \
    static struct PyModuleDef module = {                                                       \
        PyModuleDef_HEAD_INIT, name, doc, -1, methods, NULL, NULL, NULL, NULL,                 \
    }

#endif
