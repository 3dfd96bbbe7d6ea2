//! End-to-end tests (need root). One test binary, so cargo runs the tests in
//! parallel threads; each test builds its own namespaces with unique names.

mod harness;
mod uapi_wg_show;
