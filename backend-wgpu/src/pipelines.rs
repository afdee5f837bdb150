//! Compute pipelines, built lazily from a [`ShaderKey`] and cached, so a
//! graph compiled twice builds no new pipeline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::shaders::ShaderKey;

/// A built pipeline with its (derived) bind group layout.
#[derive(Debug)]
pub struct Pipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of bind group 0.
    pub layout: wgpu::BindGroupLayout,
    /// For labels and messages.
    pub label: String,
}

/// The cache of built pipelines.
#[derive(Debug, Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<ShaderKey, Arc<Pipeline>>>,
    created: AtomicUsize,
}

impl PipelineCache {
    /// The pipeline for `key`, built on first use. Shader compilation and
    /// validation errors come back as `Err` (caught in an error scope).
    pub fn get(&self, device: &wgpu::Device, key: &ShaderKey) -> Result<Arc<Pipeline>, String> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| "pipeline cache lock poisoned".to_string())?;
        if let Some(p) = map.get(key) {
            return Ok(p.clone());
        }
        let pipeline = Arc::new(build(device, key)?);
        self.created.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// Pipelines built so far.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }
}

fn build(device: &wgpu::Device, key: &ShaderKey) -> Result<Pipeline, String> {
    let label = key.label();
    let source = key.source()?;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        // Every shader writes its workgroup memory before reading it.
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("building pipeline `{label}` failed: {e}"));
    }
    Ok(Pipeline {
        pipeline,
        layout,
        label,
    })
}
