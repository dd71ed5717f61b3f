//! Every `scripts/run` command in the README runs as written (from a scratch folder, with the repo's relative
//! paths made absolute) and exits 0. Needs the release binary and its library (scripts/test sets them up).

use std::path::Path;
use std::process::Command;

fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string("README.md").unwrap();
    let mut cmds = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        match current.take() {
            Some(mut c) => {
                c.push(' ');
                c.push_str(line.trim_start().trim_end_matches('\\'));
                if line.ends_with('\\') {
                    current = Some(c);
                } else {
                    cmds.push(c);
                }
            }
            None if line.starts_with("scripts/run ") => {
                let c = line.trim_end_matches('\\').to_string();
                if line.ends_with('\\') {
                    current = Some(c);
                } else {
                    cmds.push(c);
                }
            }
            None => {}
        }
    }
    cmds
}

#[test]
fn every_readme_command_runs() {
    let root = std::fs::canonicalize(".").unwrap();
    let cmds = readme_commands();
    assert!(cmds.len() >= 4, "found {cmds:?}");
    let scratch = std::env::temp_dir().join(format!("sdonnx-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    for cmd in &cmds {
        let abs = |p: &str| format!("{}/{p}", root.display());
        let script = cmd
            .replacen("scripts/run", &abs("scripts/run"), 1)
            .replace(" tests/", &format!(" {}", abs("tests/")))
            .replace(" onnx/", &format!(" {}", abs("onnx/")))
            .replace(" docs/", &format!(" {}", abs("docs/")))
            .replace(" examples/", &format!(" {}", abs("examples/")));
        let o = Command::new("bash")
            .args(["-c", &script])
            .current_dir(&scratch)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}\nexit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(Path::new(&scratch).join("green.png").is_file());
    let _ = std::fs::remove_dir_all(&scratch);
}
