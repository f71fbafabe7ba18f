//! The Python reference implementations in bench/peer: the virtualenv they run in.

use std::path::PathBuf;

use anyhow::Context;

use crate::workspace_dir;

/// Returns the folder of the reference implementations' virtualenv, under target/.
pub fn venv() -> PathBuf {
    workspace_dir().join("target/peer-venv")
}

/// Creates the reference implementations' virtualenv and installs their pinned requirements
/// from PyPI, unless it already imports them.
pub fn ensure_venv() -> anyhow::Result<()> {
    let venv = venv();
    let python = venv.join("bin/python");
    let ready = python.exists()
        && std::process::Command::new(&python)
            .args([
                "-c",
                "import PIL, boto3, psycopg, kafka, zstandard, flask, gunicorn",
            ])
            .status()
            .is_ok_and(|status| status.success());
    if ready {
        return Ok(());
    }
    println!(
        "installing the reference worker's and API's packages into {}",
        venv.display()
    );
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("failed to run python3 -m venv; is Python 3 installed?")?;
    anyhow::ensure!(status.success(), "python3 -m venv failed with {status}");
    let requirements = workspace_dir().join("bench/peer/requirements.txt");
    let status = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "-r"])
        .arg(&requirements)
        .status()
        .context("failed to run pip")?;
    anyhow::ensure!(status.success(), "pip install failed with {status}");
    Ok(())
}
