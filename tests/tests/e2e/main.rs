//! End-to-end tests (need root). One test binary, so cargo runs the tests in
//! parallel threads; each test builds its own namespaces with unique names.

mod adversaries;
mod cli_docs;
mod coordinated;
mod dataplane;
mod harness;
mod interop;
mod reload;
mod startup;
mod three_tier;
mod uapi_wg_show;
