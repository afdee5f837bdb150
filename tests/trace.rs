//! The `tracing` trace of a run: a `run <node>` line per step and a
//! `free %K after <node>` line per freed value. Alone in its binary because
//! it installs a global subscriber (backends trace from their own worker
//! threads, which a thread-local subscriber would not see).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use tensorgraph::{DType, Graph, Value};

/// An in-memory log the fmt subscriber writes into.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[test]
fn run_and_free_lines_at_debug_level() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("tensorgraph=debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber of this binary");

    on_every_device(|d| {
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("input");
        let w = g.input("w", DType::F32, [8, 3]).expect("input");
        let mm = x.matmul(&w).expect("matmul");
        let y = mm.relu().and_then(|r| r.sum(&[1], false)).expect("builds");
        // Node by node, so each op is its own step (fusion would merge the
        // relu into the matmul).
        let mut options = tensorgraph::options(d).expect("device");
        options.passes = tensorgraph::PassOptions::none();
        let plan = g.compile(&[&y], &options).expect("compile");
        let before = log.text().len();
        plan.run(&[
            ("x", Value::F32(rand_f32(1, &[4, 8], -1.0, 1.0))),
            ("w", Value::F32(rand_f32(2, &[8, 3], -1.0, 1.0))),
        ])
        .expect("run");
        let text = log.text()[before..].to_string();
        let mm_name = mm.name();
        assert!(mm_name.starts_with("matmul_"), "auto name {mm_name}");
        assert!(
            text.contains(&format!("run {mm_name}")),
            "{d}: no `run {mm_name}` in:\n{text}"
        );
        let mut frees = 0;
        for step in plan.steps() {
            if !step.kernel.op.is_source() {
                let line = format!("run {}", step.name);
                assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
            }
            for v in &step.free_after {
                let line = format!("free {v} after {}", step.name);
                assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
                frees += 1;
            }
        }
        // x, w, the matmul and the relu are freed; the output is not.
        assert!(frees >= 4, "{d}: {frees} frees planned");
        let mm_frees = plan
            .steps()
            .iter()
            .find(|s| s.name == mm_name)
            .map(|s| s.free_after.len())
            .expect("matmul step");
        assert_eq!(mm_frees, 2, "{d}: x and w die at the matmul");

        // A fused step that writes into a dying buffer (the product of a
        // matmul and a reduction, which no epilogue absorbs) says so.
        let g = Graph::new();
        let x = g.input("x", DType::F32, [4, 8]).expect("input");
        let w = g.input("w", DType::F32, [8, 3]).expect("input");
        let mm = x
            .matmul(&w)
            .and_then(|p| p.sum(&[1], true))
            .expect("matmul, sum");
        let y = (&mm * 2.0 + 1.0).relu().expect("fusable");
        let Some(plan) = compile_on(d, &g, &[&y]) else {
            return;
        };
        let step = plan
            .steps()
            .iter()
            .find(|s| s.in_place.is_some())
            .expect("the fused step runs in place");
        let donor = step.inputs[step.in_place.expect("in place")];
        let line = format!(
            "reuse {donor} in place for {} at {}",
            step.outputs[0], step.name
        );
        let before = log.text().len();
        plan.run(&[
            ("x", Value::F32(rand_f32(1, &[4, 8], -1.0, 1.0))),
            ("w", Value::F32(rand_f32(2, &[8, 3], -1.0, 1.0))),
        ])
        .expect("run");
        let text = log.text()[before..].to_string();
        assert!(text.contains(&line), "{d}: no `{line}` in:\n{text}");
        assert!(
            !text.contains(&format!("free {donor} ")),
            "{d}: an in-place donor is taken over, not freed:\n{text}"
        );
    });
}
