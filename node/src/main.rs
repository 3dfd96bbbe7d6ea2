//! `segmesh-node` binary: all logic is in [`segmesh_node::cli`].

fn main() {
    if let Err(e) = segmesh_node::cli::main() {
        // The whole cause chain, once.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
