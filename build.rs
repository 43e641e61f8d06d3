//! Link flags for the gateway's binaries. Relative relocations packed as
//! RELR (`-z pack-relative-relocs`, glibc 2.36+ and binutils 2.38+, or lld):
//! the dynamic loader reads a table of a few kilobytes at start instead of
//! ~26,000 24-byte entries, pages that otherwise stay mapped all the
//! process's life. Only on glibc Linux; `MODELGATE_NO_RELR=1` turns it off
//! for an older toolchain.
fn main() {
    println!("cargo:rerun-if-env-changed=MODELGATE_NO_RELR");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("MODELGATE_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}
