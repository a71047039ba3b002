//! Records, for the environment block of every results file, the compiler's version and the
//! git revision of the sources the binary is built from (`+dirty` when they differ from it).

use std::process::Command;

fn run(program: &str, args: &[&str]) -> Option<String> {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ATTNBENCH_RUSTC_VERSION={version}");

    // Only what is compiled into the binary decides whether it is dirty.
    let sources = [
        "src",
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
        "variants/presets.toml",
    ];
    let revision = match run("git", &["rev-parse", "HEAD"]) {
        Some(rev) => {
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            args.extend(sources);
            let dirty = run("git", &args).is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}+dirty") } else { rev }
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=ATTNBENCH_GIT_REVISION={revision}");
    for path in sources
        .iter()
        .chain(&[".git/HEAD", ".git/refs/heads", ".git/packed-refs"])
    {
        println!("cargo:rerun-if-changed={path}");
    }
}
