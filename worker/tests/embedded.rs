//! The single-machine `batch` command on the embedded backends: a SQLite job table, folders
//! for images and overlays and the embedded queue, with no service running.

mod common;

use std::path::Path;
use std::process::Command;

use common::{sample_pngs, shared_dir};

fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("rfo-worker")
}

#[test]
fn batch_processes_folder_on_embedded_backends() {
    let root = std::env::temp_dir().join(format!("rfo-batch-{}", uuid::Uuid::now_v7().simple()));
    let input = root.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let samples = sample_pngs();
    for path in &samples {
        std::fs::copy(path, input.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(input.join("notes.png"), b"a text file, not an image\n").unwrap();
    std::fs::copy(
        shared_dir().join("cases/png/P13_truncated_mid_idat.png"),
        input.join("truncated.png"),
    )
    .unwrap();

    let mut command = Command::new(worker_binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("RFO_") || name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    let output = command
        .current_dir(&root)
        .arg("batch")
        .arg(&input)
        .output()
        .expect("run rfo-worker batch");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "batch failed: {stderr}");

    let summary = format!("jobs: {} done, 2 failed, 0 unfinished", samples.len());
    assert!(stdout.contains(&summary), "no {summary:?} in:\n{stdout}");
    assert!(
        stdout.contains("failed with truncated_image: 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed with unsupported_format: 1"),
        "{stdout}"
    );

    let overlays: Vec<_> = std::fs::read_dir(root.join("data/output/overlays"))
        .expect("overlay folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        overlays.len(),
        2 * samples.len(),
        "an overlay and a preview per done job"
    );
    for name in overlays.iter().filter(|n| !n.ends_with(".preview.png")) {
        let bytes = std::fs::read(root.join("data/output/overlays").join(name)).unwrap();
        let (width, height) = common::png_size(&bytes);
        assert!(width > 0 && height > 0, "{name}");
    }

    let json_start = stdout.find('[').expect("the /recent listing");
    let json_end = stdout.rfind(']').expect("the /recent listing");
    let recent: serde_json::Value = serde_json::from_str(&stdout[json_start..=json_end]).unwrap();
    let jobs = recent.as_array().unwrap();
    assert_eq!(jobs.len(), samples.len() + 2);
    let created: Vec<&str> = jobs
        .iter()
        .map(|j| j["created_at"].as_str().unwrap())
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    let _ = std::fs::remove_dir_all(&root);
}
