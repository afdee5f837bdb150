//! Recording one segment: kernels append [`Cmd`]s, then the whole segment
//! is encoded into one command encoder and submitted once, with every
//! dispatch's parameters packed into a single uniform buffer.

use std::num::NonZeroU64;
use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::params::Params;
use crate::pipelines::{Pipeline, PipelineCache};
use crate::shaders::ShaderKey;

/// The device handles and limits kernels record against.
#[derive(Debug)]
pub struct Gpu {
    /// The logical device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The limits the device was created with (the adapter's own).
    pub limits: wgpu::Limits,
}

/// A storage binding: a buffer and how many bytes of it the shader sees.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The buffer.
    pub buffer: wgpu::Buffer,
    /// Bound bytes from offset 0 (a nonzero multiple of 4).
    pub size: u64,
}

impl Binding {
    /// `bytes` of `buffer` seen as scalars.
    pub fn scalars(buffer: &wgpu::Buffer, bytes: usize) -> Self {
        Binding {
            buffer: buffer.clone(),
            size: (bytes as u64).max(4).next_multiple_of(4).min(buffer.size()),
        }
    }

    /// `bytes` of `buffer` seen as `vec4`s (rounded up to whole vectors;
    /// pool buffers are multiples of 16 bytes).
    pub fn vec4s(buffer: &wgpu::Buffer, bytes: usize) -> Self {
        Binding {
            buffer: buffer.clone(),
            size: (bytes as u64)
                .max(16)
                .next_multiple_of(16)
                .min(buffer.size()),
        }
    }
}

/// One recorded command.
#[derive(Debug)]
pub enum Cmd {
    /// A compute dispatch.
    Dispatch {
        /// What to run.
        pipeline: Arc<Pipeline>,
        /// Storage bindings 0.., in order; the params block binds after them.
        bindings: Vec<Binding>,
        /// The uniform block.
        params: Params,
        /// Workgroup counts.
        groups: [u32; 3],
    },
    /// A buffer-to-buffer copy.
    Copy {
        /// Source.
        src: wgpu::Buffer,
        /// Destination.
        dst: wgpu::Buffer,
        /// Bytes (a multiple of 4).
        bytes: u64,
    },
}

/// The commands of one segment being recorded.
#[derive(Debug)]
pub struct Recorder<'a> {
    /// Device and limits.
    pub gpu: &'a Gpu,
    pipelines: &'a PipelineCache,
    cmds: Vec<Cmd>,
}

/// Workgroup counts for `groups` workgroups: along x up to the cap, the
/// rest folded into y (shaders rebuild the linear index from
/// `num_workgroups`).
pub fn grid(groups: u64, cap: u32) -> Result<[u32; 3], String> {
    let cap = u64::from(cap.max(1));
    let x = groups.min(cap);
    let y = groups.div_ceil(x.max(1));
    if y > cap {
        return Err(format!(
            "{groups} workgroups exceed this adapter's limit of {cap} x {cap} per dispatch"
        ));
    }
    Ok([x as u32, y as u32, 1])
}

impl<'a> Recorder<'a> {
    /// An empty recording.
    pub fn new(gpu: &'a Gpu, pipelines: &'a PipelineCache) -> Self {
        Recorder {
            gpu,
            pipelines,
            cmds: Vec::new(),
        }
    }

    /// Records a dispatch of `groups` workgroups (nothing when zero) of
    /// the pipeline for `key`.
    pub fn dispatch(
        &mut self,
        key: &ShaderKey,
        bindings: Vec<Binding>,
        params: Params,
        groups: u64,
    ) -> Result<(), String> {
        if groups == 0 {
            return Ok(());
        }
        let storage = self.gpu.limits.max_storage_buffers_per_shader_stage as usize;
        if bindings.len() > storage {
            return Err(format!(
                "{} needs {} storage buffers, this adapter allows {storage} per stage",
                key.label(),
                bindings.len()
            ));
        }
        let groups = grid(groups, self.gpu.limits.max_compute_workgroups_per_dimension)?;
        let pipeline = self.pipelines.get(&self.gpu.device, key)?;
        self.cmds.push(Cmd::Dispatch {
            pipeline,
            bindings,
            params,
            groups,
        });
        Ok(())
    }

    /// Records a copy of the first `bytes` of `src` into `dst`.
    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: usize) {
        let bytes = (bytes as u64).next_multiple_of(4);
        if bytes > 0 {
            self.cmds.push(Cmd::Copy {
                src: src.clone(),
                dst: dst.clone(),
                bytes,
            });
        }
    }

    /// Encodes every command into one encoder and submits it, without
    /// waiting for the GPU.
    pub fn submit(self) -> Result<(), String> {
        if self.cmds.is_empty() {
            return Ok(());
        }
        let device = &self.gpu.device;
        let align = u64::from(self.gpu.limits.min_uniform_buffer_offset_alignment.max(16));
        // Pack every params block at an aligned offset of one buffer.
        let mut blob: Vec<u8> = Vec::new();
        let mut offsets = Vec::new();
        for cmd in &self.cmds {
            if let Cmd::Dispatch { params, .. } = cmd {
                let at = (blob.len() as u64).next_multiple_of(align);
                blob.resize(at as usize, 0);
                let bytes = params.bytes();
                offsets.push((at, bytes.len() as u64));
                blob.extend_from_slice(&bytes);
            }
        }
        let params_buffer = (!blob.is_empty()).then(|| {
            blob.resize(blob.len().next_multiple_of(16), 0);
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("tensorgraph params"),
                contents: &blob,
                usage: wgpu::BufferUsages::UNIFORM,
            })
        });

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("tensorgraph segment"),
        });
        let mut next_params = offsets.into_iter();
        let mut i = 0;
        while i < self.cmds.len() {
            match &self.cmds[i] {
                Cmd::Copy { src, dst, bytes } => {
                    encoder.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                    i += 1;
                }
                Cmd::Dispatch { .. } => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("tensorgraph kernels"),
                        timestamp_writes: None,
                    });
                    while let Some(Cmd::Dispatch {
                        pipeline,
                        bindings,
                        groups,
                        ..
                    }) = self.cmds.get(i)
                    {
                        let (offset, size) = next_params.next().ok_or("params out of step")?;
                        let pbuf = params_buffer.as_ref().ok_or("no params buffer")?;
                        let group = bind_group(device, pipeline, bindings, pbuf, offset, size)?;
                        pass.set_pipeline(&pipeline.pipeline);
                        pass.set_bind_group(0, &group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                    }
                }
            }
        }
        self.gpu.queue.submit([encoder.finish()]);
        Ok(())
    }
}

fn bind_group(
    device: &wgpu::Device,
    pipeline: &Pipeline,
    bindings: &[Binding],
    params: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<wgpu::BindGroup, String> {
    let nonzero =
        |n: u64| NonZeroU64::new(n).ok_or_else(|| format!("empty binding in {}", pipeline.label));
    let mut entries = Vec::with_capacity(bindings.len() + 1);
    for (i, b) in bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &b.buffer,
                offset: 0,
                size: Some(nonzero(b.size)?),
            }),
        });
    }
    entries.push(wgpu::BindGroupEntry {
        binding: bindings.len() as u32,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset,
            size: Some(nonzero(size)?),
        }),
    });
    Ok(device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&pipeline.label),
        layout: &pipeline.layout,
        entries: &entries,
    }))
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_folds_into_y() {
        assert_eq!(grid(10, 65535), Ok([10, 1, 1]));
        assert_eq!(grid(65536, 65535), Ok([65535, 2, 1]));
        assert!(grid(u64::from(u32::MAX) * 4, 65535).is_err());
    }
}
