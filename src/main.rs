//! CLI entry: parse arguments and dispatch. Nothing else lives here.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(modelgate::cli::run());
}
