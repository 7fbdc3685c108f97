/* The header's values of the macros bindgen cannot evaluate, for fabric-sys's tests to compare
   with the constants written out in src/lib.rs. libfabric 2.x wraps its deprecated macros in
   _Pragma("GCC warning ..."): bindgen then drops them, and compiling this warns (warnings are
   off for it). */
#include <rdma/fabric.h>

const unsigned long long fabric_sys_header_local_mr = FI_LOCAL_MR;
