//! Rendering DOT through Graphviz: `dot` when installed, else the `.dot`
//! file with instructions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// What [`render`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Graphviz rendered the picture at this path.
    Image(PathBuf),
    /// Graphviz is not installed: the DOT source was written here instead.
    DotOnly {
        /// The `.dot` file written.
        dot: PathBuf,
        /// How to render it.
        hint: String,
    },
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Renders `dot` source to `path`; the format follows the extension (`svg`,
/// `png`, `pdf`, ...). Without Graphviz (`apt-get install graphviz`), writes
/// `path` with the extension `.dot` and says how to render it.
pub fn render(dot: &str, path: impl AsRef<Path>) -> Result<Rendered> {
    let path = path.as_ref();
    let format = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("svg")
        .to_string();
    let child = Command::new("dot")
        .arg(format!("-T{format}"))
        .arg("-o")
        .arg(path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dot_path = path.with_extension("dot");
            std::fs::write(&dot_path, dot).map_err(|e| io_error(&dot_path, e))?;
            let hint = format!(
                "Graphviz is not installed (apt-get install graphviz); render with: dot -T{format} {} -o {}",
                dot_path.display(),
                path.display()
            );
            return Ok(Rendered::DotOnly {
                dot: dot_path,
                hint,
            });
        }
        Err(e) => return Err(io_error(path, e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot.as_bytes())
            .map_err(|e| io_error(path, e))?;
    }
    let out = child.wait_with_output().map_err(|e| io_error(path, e))?;
    if !out.status.success() {
        return Err(io_error(
            path,
            format!(
                "dot failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(Rendered::Image(path.to_path_buf()))
}
