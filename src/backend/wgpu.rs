//! The wgpu backend: decodes on any GPU with Vulkan, Metal or DX12 through
//! `shaders/decode.wgsl`.
//!
//! The device is opened once with the adapter's own limits, and the decode
//! and copy pipelines are created once and reused. An uploaded tensor is
//! cut into segments (see [`gpu_layout`]) that each fit one storage binding
//! and one dispatch; a decode binds each segment's planes and the output
//! range it writes, and runs one workgroup per block.

use std::any::Any;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::codec::{BlockIndex, EncodedView, TensorParams};
use crate::error::Result;

use super::gpu_layout::{self, DispatchLimits, DispatchParams, Segment};
use super::{
    Backend, BackendInfo, DecodeJob, DeviceBuffer, DeviceTensor, PendingDecode, backend_error,
    check_jobs, downcast,
};

const NAME: &str = "wgpu";
const DECODE_SHADER: &str = include_str!("../../shaders/decode.wgsl");
const COPY_SHADER: &str = include_str!("../../shaders/copy.wgsl");

/// Bytes of workgroup memory the decode shader declares: the decode table
/// (2048 words), the prefix-sum buffer (256 words) and two shared words.
const DECODE_WORKGROUP_BYTES: u32 = (2048 + 256 + 2) * 4;

/// Limits to impose below the adapter's, so tests can force the paths that
/// large tensors take (several bindings, several dispatches).
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitOverrides {
    pub max_binding_bytes: Option<u64>,
    pub max_workgroups: Option<u32>,
}

pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    dispatch_limits: DispatchLimits,
    decode_pipeline: wgpu::ComputePipeline,
    decode_layout: wgpu::BindGroupLayout,
    copy_pipeline: wgpu::ComputePipeline,
    copy_layout: wgpu::BindGroupLayout,
    /// Timestamp queries are available for device-side timing.
    timestamps: bool,
    /// Set when the device is lost: every later call fails with it.
    lost: Arc<Mutex<Option<String>>>,
}

enum WgpuTensor {
    Coded {
        params: TensorParams,
        segments: Vec<SegmentBuffers>,
    },
    /// A tensor stored raw, padded to whole words; decoding copies it.
    Raw { buffer: wgpu::Buffer, len: u64 },
}

/// One segment's planes and descriptors on the device.
struct SegmentBuffers {
    segment: Segment,
    blocks: wgpu::Buffer,
    tables: wgpu::Buffer,
    exceptions: wgpu::Buffer,
    head: wgpu::Buffer,
    rest: wgpu::Buffer,
}

struct WgpuBuffer {
    buffer: wgpu::Buffer,
    len: u64,
}

impl DeviceTensor for WgpuTensor {
    fn decoded_bytes(&self) -> u64 {
        match self {
            WgpuTensor::Coded { params, .. } => params.decoded_bytes(),
            WgpuTensor::Raw { len, .. } => *len,
        }
    }

    fn resident_bytes(&self) -> u64 {
        match self {
            WgpuTensor::Coded { segments, .. } => segments
                .iter()
                .flat_map(|s| [&s.blocks, &s.tables, &s.exceptions, &s.head, &s.rest])
                .map(|buffer| buffer.size())
                .sum(),
            WgpuTensor::Raw { buffer, .. } => buffer.size(),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn len(&self) -> u64 {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WgpuBackend {
    /// Opens the highest-performance adapter wgpu finds.
    pub fn new() -> Result<Self> {
        Self::with_limits(LimitOverrides::default())
    }

    pub fn with_limits(overrides: LimitOverrides) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::PRIMARY;
        descriptor.flags = wgpu::InstanceFlags::empty().with_env();
        let instance = wgpu::Instance::new(descriptor);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| backend_error(NAME, format!("no adapter: {e}")))?;
        let info = adapter.get_info();
        let adapter_limits = adapter.limits();
        if adapter_limits.max_compute_workgroup_storage_size < DECODE_WORKGROUP_BYTES
            || adapter_limits.max_compute_invocations_per_workgroup < gpu_layout::WORKGROUP_SIZE
        {
            return Err(backend_error(
                NAME,
                format!(
                    "{} cannot run 256-thread workgroups with {DECODE_WORKGROUP_BYTES} bytes of workgroup memory",
                    info.name
                ),
            ));
        }
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = if timestamps {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ecfloat"),
            required_features,
            required_limits: adapter_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| backend_error(NAME, format!("cannot open {}: {e}", info.name)))?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_flag.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("device lost ({reason:?}): {message}"));
        });
        // Errors are caught by error scopes around each operation; anything
        // outside one is reported rather than aborting the process.
        device.on_uncaptured_error(Arc::new(|error| eprintln!("wgpu: {error}")));

        let limits = device.limits();
        let dispatch_limits = DispatchLimits {
            max_binding_bytes: overrides
                .max_binding_bytes
                .unwrap_or(u64::MAX)
                .min(limits.max_storage_buffer_binding_size)
                .min(limits.max_buffer_size),
            max_workgroups: overrides
                .max_workgroups
                .unwrap_or(u32::MAX)
                .min(limits.max_compute_workgroups_per_dimension),
        };
        let (decode_pipeline, decode_layout) = compute_pipeline(
            &device,
            "decode",
            DECODE_SHADER,
            &[
                Binding::Uniform,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::ReadWrite,
            ],
        );
        let (copy_pipeline, copy_layout) = compute_pipeline(
            &device,
            "copy",
            COPY_SHADER,
            &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
        );
        let backend = WgpuBackend {
            device,
            queue,
            info,
            limits,
            dispatch_limits,
            decode_pipeline,
            decode_layout,
            copy_pipeline,
            copy_layout,
            timestamps,
            lost,
        };
        backend.check_lost()?;
        Ok(backend)
    }

    fn check_lost(&self) -> Result<()> {
        check_lost(&self.lost)
    }

    /// Runs `work` inside error scopes and turns what they catch into one
    /// error saying what was being done.
    fn scoped<T>(&self, what: &str, work: impl FnOnce() -> T) -> Result<T> {
        self.check_lost()?;
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = work();
        let validation = pollster::block_on(validation.pop());
        let memory = pollster::block_on(memory.pop());
        if let Some(error) = memory {
            return Err(backend_error(
                NAME,
                format!("{what}: does not fit in device memory ({error})"),
            ));
        }
        if let Some(error) = validation {
            return Err(backend_error(NAME, format!("{what}: {error}")));
        }
        self.check_lost()?;
        Ok(value)
    }

    fn storage_buffer(&self, label: &str, contents: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// Submits `encoder` and waits until the device has run it.
    fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let submission =
            self.scoped("submitting work", || self.queue.submit([encoder.finish()]))?;
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| backend_error(NAME, format!("waiting for the device: {e}")))?;
        self.check_lost()
    }

    /// Records the dispatches of `jobs` into `encoder`, in one compute pass.
    fn record_decode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        jobs: &[DecodeJob],
        out: &WgpuBuffer,
        timestamps: Option<&wgpu::QuerySet>,
    ) -> Result<()> {
        let storage_alignment = self.limits.min_storage_buffer_offset_alignment as u64;
        let uniform_stride = (size_of::<DispatchParams>() as u64)
            .next_multiple_of(self.limits.min_uniform_buffer_offset_alignment as u64);
        struct Dispatch<'a> {
            segment: &'a SegmentBuffers,
            output_offset: u64,
            output_size: u64,
        }
        let mut params_bytes = Vec::new();
        let mut dispatches = Vec::new();
        for job in jobs {
            let (params, segments) = match downcast::<WgpuTensor>(NAME, job.tensor.as_any())? {
                WgpuTensor::Coded { params, segments } => (params, segments),
                WgpuTensor::Raw { buffer, len } => {
                    // Recorded before the compute pass, which begins below.
                    if *len > 0 {
                        encoder.copy_buffer_to_buffer(
                            buffer,
                            0,
                            &out.buffer,
                            job.offset,
                            len.next_multiple_of(4),
                        );
                    }
                    continue;
                }
            };
            let width = params.kind().width_bytes() as u64;
            for segment in segments {
                let start = job.offset + segment.segment.first_element * width;
                let binding_offset = start / storage_alignment * storage_alignment;
                let end = (start + segment.segment.output_bytes(params)).next_multiple_of(4);
                let out_word = ((start - binding_offset) / 4) as u32;
                let dispatch_params = segment.segment.dispatch_params(params, out_word);
                params_bytes.extend_from_slice(bytemuck::bytes_of(&dispatch_params));
                params_bytes.resize(
                    params_bytes.len().next_multiple_of(uniform_stride as usize),
                    0,
                );
                dispatches.push(Dispatch {
                    segment,
                    output_offset: binding_offset,
                    output_size: end - binding_offset,
                });
            }
        }
        if dispatches.is_empty() {
            return Ok(());
        }
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("decode params"),
                contents: &params_bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_groups: Vec<wgpu::BindGroup> = dispatches
            .iter()
            .map(|dispatch| {
                let segment = dispatch.segment;
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("decode"),
                    layout: &self.decode_layout,
                    entries: &[
                        entry(
                            0,
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: 0,
                                size: NonZeroU64::new(size_of::<DispatchParams>() as u64),
                            }),
                        ),
                        entry(1, segment.blocks.as_entire_binding()),
                        entry(2, segment.tables.as_entire_binding()),
                        entry(3, segment.exceptions.as_entire_binding()),
                        entry(4, segment.head.as_entire_binding()),
                        entry(5, segment.rest.as_entire_binding()),
                        entry(
                            6,
                            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &out.buffer,
                                offset: dispatch.output_offset,
                                size: NonZeroU64::new(dispatch.output_size),
                            }),
                        ),
                    ],
                })
            })
            .collect();
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("decode"),
            timestamp_writes: timestamps.map(|query_set| wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        });
        pass.set_pipeline(&self.decode_pipeline);
        for (index, (dispatch, bind_group)) in dispatches.iter().zip(&bind_groups).enumerate() {
            pass.set_bind_group(0, bind_group, &[(index as u64 * uniform_stride) as u32]);
            pass.dispatch_workgroups(dispatch.segment.segment.descriptors.len() as u32, 1, 1);
        }
        Ok(())
    }

    /// Seconds between the two timestamps of each pass, or `None` without
    /// timestamp support.
    fn timed_runs(
        &self,
        repeats: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder, Option<&wgpu::QuerySet>) -> Result<()>,
    ) -> Result<Vec<f64>> {
        let mut seconds = Vec::with_capacity(repeats);
        // A warm-up run first.
        for run in 0..=repeats {
            let query_set = self.timestamps.then(|| {
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                })
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = self.readback_buffer(16);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            let started = std::time::Instant::now();
            self.scoped("decode", || record(&mut encoder, query_set.as_ref()))??;
            if let Some(query_set) = &query_set {
                encoder.resolve_query_set(query_set, 0..2, &resolve, 0);
                encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, 16);
            }
            self.submit_and_wait(encoder)?;
            let wall = started.elapsed().as_secs_f64();
            let elapsed = match query_set {
                Some(_) => {
                    let mut stamps = [0u8; 16];
                    self.read_mapped(&readback, &mut stamps)?;
                    let [begin, end]: [u64; 2] = bytemuck::cast(stamps);
                    end.wrapping_sub(begin) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9
                }
                None => wall,
            };
            if run > 0 {
                seconds.push(if elapsed > 0.0 { elapsed } else { wall });
            }
        }
        Ok(seconds)
    }

    fn readback_buffer(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps a readback buffer that a finished submission filled and copies
    /// its first `out.len()` bytes out.
    fn read_mapped(&self, buffer: &wgpu::Buffer, out: &mut [u8]) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| backend_error(NAME, format!("waiting for the device: {e}")))?;
        receiver
            .recv()
            .map_err(|_| backend_error(NAME, "mapping was cancelled"))?
            .map_err(|e| backend_error(NAME, format!("cannot map the readback buffer: {e}")))?;
        {
            let view = buffer.get_mapped_range(..).map_err(|e| {
                backend_error(NAME, format!("cannot read the readback buffer: {e}"))
            })?;
            out.copy_from_slice(&view[..out.len()]);
        }
        buffer.unmap();
        Ok(())
    }
}

/// A submitted decode; later submissions on the same queue see its output.
struct WgpuPending {
    device: wgpu::Device,
    submission: wgpu::SubmissionIndex,
    lost: Arc<Mutex<Option<String>>>,
}

impl PendingDecode for WgpuPending {
    fn wait(self: Box<Self>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.submission),
                timeout: None,
            })
            .map_err(|e| backend_error(NAME, format!("waiting for the device: {e}")))?;
        check_lost(&self.lost)
    }
}

/// The device-lost message, once the device is lost, as an error.
fn check_lost(lost: &Mutex<Option<String>>) -> Result<()> {
    match lost.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(message) => Err(backend_error(NAME, message.clone())),
        None => Ok(()),
    }
}

impl WgpuBackend {
    /// The device and queue, for clients that compute on decoded buffers.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The wgpu buffer behind a buffer this backend allocated.
    pub fn buffer_of(buffer: &dyn DeviceBuffer) -> Option<&wgpu::Buffer> {
        buffer
            .as_any()
            .downcast_ref::<WgpuBuffer>()
            .map(|b| &b.buffer)
    }
}

#[derive(Clone, Copy)]
enum Binding {
    Uniform,
    Read,
    ReadWrite,
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// A compute pipeline for `entry_point` of `source`, with the bindings in
/// order; the uniform binding takes a dynamic offset.
fn compute_pipeline(
    device: &wgpu::Device,
    entry_point: &str,
    source: &str,
    bindings: &[Binding],
) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .enumerate()
        .map(|(index, binding)| wgpu::BindGroupLayoutEntry {
            binding: index as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match binding {
                    Binding::Uniform => wgpu::BufferBindingType::Uniform,
                    Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: matches!(binding, Binding::Uniform),
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry_point),
        entries: &entries,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(entry_point),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry_point),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry_point),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            // The shaders write every workgroup variable before reading it.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    (pipeline, layout)
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn info(&self) -> BackendInfo {
        let limits = &self.limits;
        BackendInfo {
            backend: NAME,
            device: format!(
                "{} ({:?}, {:?})",
                self.info.name, self.info.backend, self.info.device_type
            ),
            driver: format!("{} {}", self.info.driver, self.info.driver_info)
                .trim()
                .to_string(),
            limits: [
                (
                    "max_storage_buffer_binding_size",
                    limits.max_storage_buffer_binding_size.into(),
                ),
                ("max_buffer_size", limits.max_buffer_size.into()),
                (
                    "max_compute_workgroups_per_dimension",
                    limits.max_compute_workgroups_per_dimension.into(),
                ),
                (
                    "max_compute_workgroup_storage_size",
                    limits.max_compute_workgroup_storage_size.into(),
                ),
                ("timestamp_queries", self.timestamps.into()),
            ]
            .into(),
        }
    }

    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>> {
        let segments = gpu_layout::segments(tensor, index, self.dispatch_limits);
        let max_buffer = self
            .limits
            .max_buffer_size
            .min(self.dispatch_limits.max_binding_bytes);
        let uploaded = self.scoped("uploading a tensor", || {
            segments
                .into_iter()
                .map(|segment| {
                    let head = gpu_layout::padded_words(&tensor.head[segment.head_bytes.clone()]);
                    let rest = gpu_layout::padded_words(&tensor.rest[segment.rest_bytes.clone()]);
                    for (what, words) in [("head", head.len()), ("rest", rest.len())] {
                        if words as u64 * 4 > max_buffer {
                            return Err(backend_error(
                                NAME,
                                format!("a {what} plane segment of {} bytes exceeds the device's {max_buffer}-byte buffers", words * 4),
                            ));
                        }
                    }
                    // Bindings must not be empty: pad the small lists.
                    let mut tables = segment.tables.clone();
                    tables.resize(tables.len().max(1), 0);
                    let mut exceptions = segment.exceptions.clone();
                    exceptions.resize(exceptions.len().max(1), 0);
                    Ok(SegmentBuffers {
                        blocks: self.storage_buffer("blocks", bytemuck::cast_slice(&segment.descriptors)),
                        tables: self.storage_buffer("tables", bytemuck::cast_slice(&tables)),
                        exceptions: self.storage_buffer("exceptions", bytemuck::cast_slice(&exceptions)),
                        head: self.storage_buffer("head", bytemuck::cast_slice(&head)),
                        rest: self.storage_buffer("rest", bytemuck::cast_slice(&rest)),
                        segment,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })??;
        Ok(Box::new(WgpuTensor::Coded {
            params: tensor.params.clone(),
            segments: uploaded,
        }))
    }

    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>> {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
        if padded.len() as u64 > self.limits.max_buffer_size {
            return Err(backend_error(
                NAME,
                format!(
                    "a raw tensor of {} bytes exceeds the device's largest buffer",
                    bytes.len()
                ),
            ));
        }
        let buffer = self.scoped("uploading a raw tensor", || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("raw tensor"),
                    contents: &padded,
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        Ok(Box::new(WgpuTensor::Raw {
            buffer,
            len: bytes.len() as u64,
        }))
    }

    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>> {
        let size = bytes.next_multiple_of(4).max(4);
        if size > self.limits.max_buffer_size {
            return Err(backend_error(
                NAME,
                format!(
                    "{bytes} bytes exceed the device's largest buffer ({} bytes)",
                    self.limits.max_buffer_size
                ),
            ));
        }
        let buffer = self.scoped("allocating an output buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("decoded"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Box::new(WgpuBuffer { buffer, len: bytes }))
    }

    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()> {
        self.decode_async(jobs, out)?.wait()
    }

    fn decode_async(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
    ) -> Result<Box<dyn PendingDecode>> {
        check_jobs(NAME, jobs, out.len(), 4)?;
        let out = downcast::<WgpuBuffer>(NAME, out.as_any())?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.scoped("decode", || {
            self.record_decode(&mut encoder, jobs, out, None)
        })??;
        let submission =
            self.scoped("submitting work", || self.queue.submit([encoder.finish()]))?;
        Ok(Box::new(WgpuPending {
            device: self.device.clone(),
            submission,
            lost: self.lost.clone(),
        }))
    }

    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        let buffer = downcast::<WgpuBuffer>(NAME, buffer.as_any())?;
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&end| end <= buffer.len)
            .ok_or_else(|| backend_error(NAME, "download past the end of the buffer"))?;
        // Copy in pieces of at most 64 MiB through a mappable buffer.
        const PIECE: u64 = 64 << 20;
        let mut position = offset;
        while position < end {
            let start = position / 4 * 4;
            let stop = (position + PIECE).min(end).next_multiple_of(4);
            let staging = self.readback_buffer(stop - start);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&buffer.buffer, start, &staging, 0, stop - start);
            self.submit_and_wait(encoder)?;
            let mut piece = vec![0u8; (stop - start) as usize];
            self.read_mapped(&staging, &mut piece)?;
            let take = ((position + PIECE).min(end) - position) as usize;
            let skip = (position - start) as usize;
            let done = (position - offset) as usize;
            out[done..done + take].copy_from_slice(&piece[skip..skip + take]);
            position += take as u64;
        }
        Ok(())
    }

    fn time_decode(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
        repeats: usize,
    ) -> Result<Vec<f64>> {
        check_jobs(NAME, jobs, out.len(), 4)?;
        let out = downcast::<WgpuBuffer>(NAME, out.as_any())?;
        self.timed_runs(repeats, |encoder, timestamps| {
            self.record_decode(encoder, jobs, out, timestamps)
        })
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Vec<f64>> {
        let vectors = bytes.div_ceil(16).max(1);
        let size = vectors * 16;
        if size > self.dispatch_limits.max_binding_bytes {
            return Err(backend_error(
                NAME,
                format!("{bytes} bytes exceed one storage binding; time a smaller copy"),
            ));
        }
        let buffers = self.scoped("allocating copy buffers", || {
            let make = |label| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            };
            (make("copy source"), make("copy destination"))
        })?;
        let workgroups = (vectors.div_ceil(gpu_layout::WORKGROUP_SIZE as u64) as u32)
            .min(self.dispatch_limits.max_workgroups)
            .min(65_535);
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("copy params"),
                contents: bytemuck::cast_slice(&[
                    vectors as u32,
                    workgroups * gpu_layout::WORKGROUP_SIZE,
                    0,
                    0,
                ]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("copy"),
            layout: &self.copy_layout,
            entries: &[
                entry(
                    0,
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: 0,
                        size: NonZeroU64::new(16),
                    }),
                ),
                entry(1, buffers.0.as_entire_binding()),
                entry(2, buffers.1.as_entire_binding()),
            ],
        });
        self.timed_runs(repeats, |encoder, timestamps| {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("copy"),
                timestamp_writes: timestamps.map(|query_set| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            pass.set_pipeline(&self.copy_pipeline);
            pass.set_bind_group(0, &bind_group, &[0]);
            pass.dispatch_workgroups(workgroups, 1, 1);
            Ok(())
        })
    }
}
