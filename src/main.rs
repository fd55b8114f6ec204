//! `custom-pages`: the edge with the built-in filters.

use custom_pages::filters::FilterRegistry;
use std::process::ExitCode;

fn main() -> ExitCode {
    custom_pages::server::main_with(FilterRegistry::with_builtins())
}
