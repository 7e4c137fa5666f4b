//! Prints the CRDs of bridge.omninode.io as YAML, or writes one file per kind with `--out DIR`.
//! `crds/` in the repository is this program's output; a test fails when they differ.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [--out DIR]\n\
    Prints the EventTopic, EventConsumer and WebhookIngress CRDs as YAML documents, or with\n\
    --out writes DIR/eventtopics.yaml, DIR/eventconsumers.yaml, DIR/webhookingresses.yaml.";

/// The YAML of one CRD exactly as it is checked in.
fn render(crd: &bridge_api::CrdFile) -> String {
    serde_yaml::to_string(&crd.crd).expect("a CRD serializes to YAML")
}

fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for file in bridge_api::crds() {
        std::fs::write(dir.join(file.file_name), render(&file))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            let documents: Vec<String> = bridge_api::crds().iter().map(render).collect();
            print!("---\n{}", documents.join("---\n"));
            ExitCode::SUCCESS
        }
        [flag, dir] if flag == "--out" => match write_all(&PathBuf::from(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crdgen: could not write the CRDs to {dir}: {e}");
                ExitCode::FAILURE
            }
        },
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_what_crdgen_generates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        for file in bridge_api::crds() {
            let path = dir.join(file.file_name);
            let checked_in = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                checked_in == render(&file),
                "{} is stale: run `cargo run -p bridge-operator --bin crdgen -- --out crds` and commit the result",
                path.display()
            );
        }
    }

    #[test]
    fn crds_dir_holds_exactly_one_file_per_kind() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        let mut expected: Vec<String> = bridge_api::crds()
            .iter()
            .map(|f| f.file_name.to_owned())
            .collect();
        expected.sort();
        assert_eq!(found, expected);
    }
}
