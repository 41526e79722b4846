//! Runs a real model block by block from its compressed file, the way an
//! inference server would: the compressed weights stay on the device, each
//! layer is decoded just before it runs into one of two reusable buffers,
//! and every linear layer's weight matrix is applied to a fixed input on the
//! device (a WGSL shader on wgpu, a CUDA kernel on CUDA, plain Rust on the
//! CPU). Each output is compared, bit for bit, with the same computation on
//! the original weights.
//!
//! ```sh
//! cargo run --release --example run_blocks -- [--backend cpu|wgpu|cuda] [MODEL.safetensors]
//! ```
//!
//! Without a model it uses ../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors,
//! compressed into a temporary directory first.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ecfloat::backend::{self, Backend, DecodeJob, DeviceBuffer};
use ecfloat::container::{self, CompressOptions, SourceFile};
use ecfloat::runtime::{Model, ModelOptions, TensorView};

/// A matrix-vector product on the backend's device.
trait MatVec {
    /// `W x` for the `rows × cols` matrix of dtype code `dtype` (0 F32,
    /// 1 BF16, 2 F16) at byte `offset` of `buffer`.
    fn matvec(
        &self,
        buffer: &dyn DeviceBuffer,
        offset: u64,
        rows: u32,
        cols: u32,
        dtype: u32,
        x: &[f32],
    ) -> Vec<f32>;
}

fn dtype_code(dtype: safetensors::Dtype) -> Option<u32> {
    match dtype {
        safetensors::Dtype::F32 => Some(0),
        safetensors::Dtype::BF16 => Some(1),
        safetensors::Dtype::F16 => Some(2),
        _ => None,
    }
}

/// Plain Rust on the host: the CPU backend's buffers are host memory.
struct CpuMatVec<'a>(&'a dyn Backend);

impl MatVec for CpuMatVec<'_> {
    fn matvec(
        &self,
        buffer: &dyn DeviceBuffer,
        offset: u64,
        rows: u32,
        cols: u32,
        dtype: u32,
        x: &[f32],
    ) -> Vec<f32> {
        let width = if dtype == 0 { 4 } else { 2 };
        let mut bytes = vec![0u8; rows as usize * cols as usize * width];
        self.0.download(buffer, offset, &mut bytes).unwrap();
        let weight = |i: usize| match dtype {
            0 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
            1 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            _ => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        };
        (0..rows as usize)
            .map(|row| {
                (0..cols as usize).fold(0f32, |sum, col| {
                    weight(row * cols as usize + col).mul_add(x[col], sum)
                })
            })
            .collect()
    }
}

#[cfg(feature = "wgpu")]
mod wgpu_matvec {
    use super::*;
    use ecfloat::backend::wgpu::WgpuBackend;
    use wgpu::util::DeviceExt;

    pub struct WgpuMatVec<'a> {
        backend: &'a WgpuBackend,
        pipeline: wgpu::ComputePipeline,
    }

    impl<'a> WgpuMatVec<'a> {
        pub fn new(backend: &'a WgpuBackend) -> Self {
            let (device, _) = backend.wgpu();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("matvec"),
                source: wgpu::ShaderSource::Wgsl(include_str!("matvec.wgsl").into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("matvec"),
                layout: None,
                module: &module,
                entry_point: Some("matvec"),
                compilation_options: Default::default(),
                cache: None,
            });
            WgpuMatVec { backend, pipeline }
        }
    }

    impl MatVec for WgpuMatVec<'_> {
        fn matvec(
            &self,
            buffer: &dyn DeviceBuffer,
            offset: u64,
            rows: u32,
            cols: u32,
            dtype: u32,
            x: &[f32],
        ) -> Vec<f32> {
            let (device, queue) = self.backend.wgpu();
            let width = if dtype == 0 { 4 } else { 2 };
            let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&[(offset / width) as u32, rows, cols, dtype]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let input = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(x),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let size = rows as u64 * 4;
            let output = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let weights = WgpuBackend::buffer(buffer).expect("a wgpu buffer");
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &self.pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: weights.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: input.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: output.as_entire_binding(),
                    },
                ],
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(rows.div_ceil(64), 1, 1);
            }
            encoder.copy_buffer_to_buffer(&output, 0, &readback, 0, size);
            queue.submit([encoder.finish()]);
            readback.map_async(wgpu::MapMode::Read, .., |result| result.unwrap());
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            let y = bytemuck::cast_slice(&readback.get_mapped_range(..).unwrap()).to_vec();
            readback.unmap();
            y
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda_matvec {
    use super::*;
    use cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};
    use ecfloat::backend::cuda::CudaBackend;

    pub struct CudaMatVec<'a> {
        backend: &'a CudaBackend,
        function: CudaFunction,
    }

    impl<'a> CudaMatVec<'a> {
        pub fn new(backend: &'a CudaBackend) -> Self {
            // Compiled for the GPU's own architecture, as the decoder is.
            let module = ecfloat::backend::cuda::load_module(
                backend.stream().context(),
                include_str!("matvec.cu"),
                "matvec.cu",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let function = module.load_function("matvec").expect("matvec is in it");
            CudaMatVec { backend, function }
        }
    }

    impl MatVec for CudaMatVec<'_> {
        fn matvec(
            &self,
            buffer: &dyn DeviceBuffer,
            offset: u64,
            rows: u32,
            cols: u32,
            dtype: u32,
            x: &[f32],
        ) -> Vec<f32> {
            let stream = self.backend.stream();
            let input = stream.clone_htod(x).unwrap();
            let mut output = stream.alloc_zeros::<f32>(rows as usize).unwrap();
            let config = LaunchConfig {
                grid_dim: (rows.div_ceil(128), 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            CudaBackend::with_slice(buffer, |weights| {
                // The guard keeps the weights' read recorded until the
                // launch is queued.
                let (base, _guard) = weights.device_ptr(stream);
                let address = base + offset;
                let mut launch = stream.launch_builder(&self.function);
                launch
                    .arg(&address)
                    .arg(&dtype)
                    .arg(&rows)
                    .arg(&cols)
                    .arg(&input)
                    .arg(&mut output);
                // Safety: the arguments match the kernel's signature, and
                // the matrix lies inside the decoded buffer.
                unsafe { launch.launch(config) }.unwrap();
            })
            .expect("a CUDA buffer");
            stream.clone_dtoh(&output).unwrap()
        }
    }
}

fn matvec_for<'a>(backend: &'a dyn Backend) -> Box<dyn MatVec + 'a> {
    #[cfg(feature = "wgpu")]
    if let Some(wgpu) = backend
        .as_any()
        .downcast_ref::<ecfloat::backend::wgpu::WgpuBackend>()
    {
        return Box::new(wgpu_matvec::WgpuMatVec::new(wgpu));
    }
    #[cfg(feature = "cuda")]
    if let Some(cuda) = backend
        .as_any()
        .downcast_ref::<ecfloat::backend::cuda::CudaBackend>()
    {
        return Box::new(cuda_matvec::CudaMatVec::new(cuda));
    }
    Box::new(CpuMatVec(backend))
}

/// Errors read as the `ecf` command's do: one line, exit status 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("run_blocks: error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> ecfloat::Result<()> {
    let mut backend_name = "auto".to_string();
    let mut model_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => {
                backend_name = args.next().ok_or_else(|| {
                    ecfloat::Error::Usage("--backend needs a name: cpu, wgpu, cuda or auto".into())
                })?
            }
            path => model_path = Some(PathBuf::from(path)),
        }
    }
    let default_model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors");
    if model_path.is_none() && !default_model.exists() {
        return Err(ecfloat::Error::Usage(format!(
            "{} is absent (the test data is not checked out here); pass a model: run_blocks [--backend NAME] MODEL.safetensors",
            default_model.display()
        )));
    }
    let scratch = tempfile::tempdir().map_err(|e| ecfloat::Error::io(&std::env::temp_dir(), e))?;
    let (source, compressed) = match model_path {
        Some(path) if SourceFile::open(&path)?.ecf_version().is_some() => {
            // Decompress once for the reference weights.
            let source = scratch.path().join("reference.safetensors");
            container::decompress_file(&path, &source, true, &Default::default())?;
            (source, path)
        }
        other => {
            let source = other.unwrap_or(default_model);
            let compressed = scratch.path().join("model.ecf.safetensors");
            container::compress_file(&source, &compressed, &CompressOptions::default())?;
            (source, compressed)
        }
    };

    let backend = backend::open(&backend_name)?;
    let backend = backend.as_ref();
    println!(
        "{} on {} ({})",
        compressed.display(),
        backend.name(),
        backend.info().device
    );
    let model = Model::open(&compressed, backend, ModelOptions::default())?;
    let reference = SourceFile::open(&source)?;
    let matvec = matvec_for(backend);

    let groups = model.groups().len();
    let mut spare = Some(model.group_buffer()?);
    // Time spent starting the pending decode (all of it on the CPU, which
    // decodes synchronously; the launch alone on a GPU).
    let started = Instant::now();
    let mut pending = Some(model.start_decode(0, model.group_buffer()?)?);
    let mut start_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut mismatches = 0;
    let mut layers = 0;
    for group in 0..groups {
        let started = Instant::now();
        let decoded = pending.take().expect("a decode is pending").wait()?;
        let decode_ms = start_ms + started.elapsed().as_secs_f64() * 1e3;
        // The next group decodes while this one computes.
        if group + 1 < groups {
            let started = Instant::now();
            pending = Some(model.start_decode(group + 1, spare.take().expect("a spare buffer"))?);
            start_ms = started.elapsed().as_secs_f64() * 1e3;
        }
        let started = Instant::now();
        let mut applied = 0;
        for view in decoded.views() {
            let (Some(dtype), [rows, cols]) = (dtype_code(view.dtype), view.shape) else {
                continue;
            };
            let x: Vec<f32> = (0..*cols).map(|j| ((j as f32) * 0.37).sin()).collect();
            let y = matvec.matvec(
                decoded.buffer(),
                view.offset,
                *rows as u32,
                *cols as u32,
                dtype,
                &x,
            );
            let y_reference =
                reference_matvec(backend, matvec.as_ref(), &reference, &view, dtype, &x)?;
            let same = y
                .iter()
                .zip(&y_reference)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                mismatches += 1;
                println!("  MISMATCH {}", view.name);
            }
            applied += 1;
        }
        layers += applied;
        let compute_ms = started.elapsed().as_secs_f64() * 1e3;
        let group_info = decoded.group();
        if applied > 0 {
            println!(
                "  {:<40} decode {:>8.3} ms (start + wait), {:>2} linear layers applied and checked in {:>9.3} ms",
                group_info.name, decode_ms, applied, compute_ms
            );
        }
        spare = Some(decoded.into_buffer());
    }
    let memory = model.memory();
    println!(
        "{layers} linear layers, {mismatches} mismatches; device memory: {:.1} MB compressed + {:.1} MB for two group buffers = {:.1} MB peak, against {:.1} MB uncompressed",
        memory.resident_bytes as f64 / 1e6,
        memory.scratch_bytes as f64 / 1e6,
        memory.peak_bytes as f64 / 1e6,
        memory.uncompressed_bytes as f64 / 1e6
    );
    if mismatches > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The same product on the original weights, uploaded as they are.
fn reference_matvec(
    backend: &dyn Backend,
    matvec: &dyn MatVec,
    reference: &SourceFile,
    view: &TensorView,
    dtype: u32,
    x: &[f32],
) -> ecfloat::Result<Vec<f32>> {
    let entry = reference
        .tensors()
        .into_iter()
        .find(|t| t.name == view.name)
        .expect("the reference has every tensor");
    let original = backend.upload_raw(&reference.data()[entry.range])?;
    let buffer = backend.alloc(original.decoded_bytes())?;
    backend.decode(
        &[DecodeJob {
            tensor: original.as_ref(),
            offset: 0,
        }],
        buffer.as_ref(),
    )?;
    Ok(matvec.matvec(
        buffer.as_ref(),
        0,
        view.shape[0] as u32,
        view.shape[1] as u32,
        dtype,
        x,
    ))
}
