//! strata-oci: the runc-compatible OCI runtime binary (see crates/cli/src/oci).

#[path = "../oci/mod.rs"]
mod oci;

fn main() {
    std::process::exit(oci::main());
}
