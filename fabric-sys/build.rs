//! Generates the libfabric bindings from the headers of the libfabric we link against.
//!
//! The library is found by pkg-config, or under `LIBFABRIC_DIR` when that is set (the AWS EFA
//! installer puts its libfabric in /opt/amazon/efa, which pkg-config does not know about).
//! Most of libfabric's API is `static inline` functions over provider ops tables; bindgen's
//! `wrap_static_fns` writes a C file of exported wrappers for them, which `cc` compiles here,
//! so no list of functions is kept by hand.
//!
//! libfabric 2.x defines its deprecated macros (`FI_LOCAL_MR`, `FI_MR_BASIC`, ...) behind a
//! `_Pragma` warning, which bindgen cannot evaluate, so they vanish from the bindings. The one
//! `fabric` reads, `FI_LOCAL_MR`, is left out of the generated bindings for every header
//! version and written out in src/lib.rs; `consts.c` gives its tests the header's value.

use std::env;
use std::path::{Path, PathBuf};

const DIR_ENV: &str = "LIBFABRIC_DIR";

fn main() {
    println!("cargo:rerun-if-env-changed={DIR_ENV}");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=consts.c");

    let include_dirs = match env::var_os(DIR_ENV) {
        Some(dir) => link_from_prefix(Path::new(&dir)),
        None => link_from_pkg_config(),
    };

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wrappers = out.join("static_wrappers");
    let clang_args: Vec<String> = include_dirs
        .iter()
        .map(|d| format!("-I{}", d.display()))
        .collect();

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("fi_.*")
        .allowlist_type("fi_.*|fid.*")
        .allowlist_var("FI_.*")
        .blocklist_item("FI_LOCAL_MR")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen could not read the libfabric headers (is libfabric-dev installed?)");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut build = cc::Build::new();
    build
        .file(wrappers.with_extension("c"))
        .file("consts.c")
        .include(env!("CARGO_MANIFEST_DIR"))
        .warnings(false);
    for dir in &include_dirs {
        build.include(dir);
    }
    build.compile("fabric_static_wrappers");
}

/// Links against `prefix/lib64` or `prefix/lib` and returns the include directory.
fn link_from_prefix(prefix: &Path) -> Vec<PathBuf> {
    let lib = ["lib64", "lib"]
        .iter()
        .map(|d| prefix.join(d))
        .find(|d| d.join("libfabric.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "{DIR_ENV}={} has no lib64/libfabric.so or lib/libfabric.so",
                prefix.display()
            )
        });
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=fabric");
    vec![prefix.join("include")]
}

fn link_from_pkg_config() -> Vec<PathBuf> {
    let lib = pkg_config::Config::new()
        .atleast_version("1.11")
        .probe("libfabric")
        .unwrap_or_else(|e| {
            panic!(
                "libfabric not found by pkg-config ({e}); install libfabric-dev or set {DIR_ENV}"
            )
        });
    lib.include_paths
}
