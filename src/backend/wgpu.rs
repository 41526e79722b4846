//! The wgpu backend: decodes on any GPU with Vulkan, Metal or DX12 through
//! `shaders/decode.wgsl`.
//!
//! The device is opened once with the adapter's own limits, and the decode
//! and copy pipelines are created once and reused. The GPU core
//! ([`super::gpu`]) cuts tensors into segments that each fit one storage
//! binding and plans every decode; this device binds each segment's planes
//! and the output range it writes, and runs one workgroup per block.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

use super::gpu::layout::{self, DispatchLimits, DispatchParams};
use super::gpu::plan::LaunchPlan;
use super::gpu::{DeviceMemory, Finished, GpuBackend, GpuDevice};
use super::{BackendInfo, Clock, Timings, backend_error, unavailable};

const NAME: &str = "wgpu";
const DECODE_SHADER: &str = include_str!("../../shaders/decode.wgsl");
const COPY_SHADER: &str = include_str!("../../shaders/copy.wgsl");
const WIDEN_SHADER: &str = include_str!("../../shaders/widen.wgsl");

/// Bytes of workgroup memory the decode shader declares, each variable
/// rounded up to 16 bytes as WebGPU counts them: the code table (268
/// words), the decode table (4096), the window and pair counts (1024 each),
/// the prefix sum's two buffers and the chunk starts (256 words each), and
/// four single words. Within the 32 KiB that Apple, Intel, AMD, NVIDIA and
/// lavapipe allow. `tests/kernel_layout.rs` checks it against the shader.
pub const DECODE_WORKGROUP_BYTES: u32 = (268 + 4096 + 2 * 1024 + 3 * 256) * 4 + 4 * 16;

/// The decode shader's constants that its compact form sets, for devices
/// with only WebGPU's default 16 KiB: two 16-bit entries a decode table
/// word, and no window counts (one word each, unused), so that the count
/// pass walks a codeword at a time. It decodes the same bits, more slowly.
const COMPACT_CONSTANTS: [(&str, &str); 3] = [
    ("COMPACT", "bool = true"),
    ("DECODE_TABLE_WORDS", "u32 = 2048u"),
    ("WINDOW_COUNT_WORDS", "u32 = 1u"),
];

/// Bytes of workgroup memory the compact decode shader declares.
pub const COMPACT_DECODE_WORKGROUP_BYTES: u32 = (268 + 2048 + 3 * 256) * 4 + 2 * 16 + 4 * 16;

const _: () = assert!(DECODE_WORKGROUP_BYTES <= 32 << 10);
const _: () = assert!(COMPACT_DECODE_WORKGROUP_BYTES <= 16 << 10);

/// The decode shader's source: as written, or in its compact form.
pub fn decode_shader_source(compact: bool) -> std::borrow::Cow<'static, str> {
    if !compact {
        return DECODE_SHADER.into();
    }
    let mut source = String::with_capacity(DECODE_SHADER.len());
    for line in DECODE_SHADER.lines() {
        let compact_value = COMPACT_CONSTANTS
            .iter()
            .find(|&&(name, _)| line.starts_with(&format!("const {name}: ")));
        match compact_value {
            Some((name, value)) => source.push_str(&format!("const {name}: {value};")),
            None => source.push_str(line),
        }
        source.push('\n');
    }
    source.into()
}

/// Limits to impose below the adapter's, so tests can force the paths that
/// large tensors take (several bindings, several dispatches).
#[derive(Clone, Copy, Debug, Default)]
pub struct LimitOverrides {
    pub max_binding_bytes: Option<u64>,
    pub max_workgroups: Option<u32>,
    /// Workgroup memory below [`DECODE_WORKGROUP_BYTES`] selects the
    /// compact decode shader.
    pub max_workgroup_storage_bytes: Option<u32>,
}

/// A GPU opened through wgpu.
pub struct WgpuDevice {
    instance: wgpu::Instance,
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    dispatch_limits: DispatchLimits,
    decode_pipeline: wgpu::ComputePipeline,
    decode_layout: wgpu::BindGroupLayout,
    copy_pipeline: wgpu::ComputePipeline,
    copy_layout: wgpu::BindGroupLayout,
    /// The widening pipelines (BF16, F16, F32) and their layout, made on first
    /// use: only a framework sharing the device needs them.
    widen: Mutex<Option<Arc<WidenPipelines>>>,
    /// Timestamp queries are available for device-side timing.
    timestamps: bool,
    /// The decode shader is the compact one (too little workgroup memory
    /// for the other).
    compact_shader: bool,
    /// Set when the device is lost: every later call fails with it.
    lost: Arc<Mutex<Option<String>>>,
}

/// The wgpu backend.
pub type WgpuBackend = GpuBackend<WgpuDevice>;

/// Opens the highest-performance adapter wgpu finds.
pub fn open() -> Result<WgpuBackend> {
    WgpuBackend::new()
}

impl GpuBackend<WgpuDevice> {
    /// Opens the highest-performance adapter wgpu finds.
    pub fn new() -> Result<Self> {
        Self::with_limits(LimitOverrides::default())
    }

    pub fn with_limits(overrides: LimitOverrides) -> Result<Self> {
        Ok(GpuBackend::from_device(WgpuDevice::open(
            overrides,
            Features::Decoder,
        )?))
    }

    /// Opens the highest-performance adapter with every feature it has
    /// that a framework sharing the device may use (all but mappable
    /// primary buffers and experimental ones), and its limits: cubecl, for
    /// one, decides what it may use from the adapter, and fails on a
    /// device that lacks what the adapter has.
    pub fn shared() -> Result<Self> {
        Ok(GpuBackend::from_device(WgpuDevice::open(
            LimitOverrides::default(),
            Features::Adapter,
        )?))
    }

    /// The device and queue, for clients that compute on decoded buffers.
    pub fn wgpu(&self) -> (&wgpu::Device, &wgpu::Queue) {
        (&self.device().device, &self.device().queue)
    }
}

impl DeviceMemory for wgpu::Buffer {
    fn size(&self) -> u64 {
        wgpu::Buffer::size(self)
    }
}

/// Which features a device is opened with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Features {
    /// Those the decoder uses.
    Decoder,
    /// The adapter's, for a device shared with a framework.
    Adapter,
}

impl WgpuDevice {
    fn open(overrides: LimitOverrides, features: Features) -> Result<Self> {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = wgpu::Backends::PRIMARY;
        descriptor.flags = wgpu::InstanceFlags::empty().with_env();
        let instance = wgpu::Instance::new(descriptor);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| unavailable(NAME, format!("no adapter: {e}")))?;
        let info = adapter.get_info();
        let adapter_limits = adapter.limits();
        let workgroup_bytes = overrides
            .max_workgroup_storage_bytes
            .unwrap_or(u32::MAX)
            .min(adapter_limits.max_compute_workgroup_storage_size);
        let compact = workgroup_bytes < DECODE_WORKGROUP_BYTES;
        if workgroup_bytes < COMPACT_DECODE_WORKGROUP_BYTES
            || adapter_limits.max_compute_invocations_per_workgroup < layout::WORKGROUP_SIZE
        {
            return Err(unavailable(
                NAME,
                format!(
                    "{} cannot run 256-thread workgroups with {COMPACT_DECODE_WORKGROUP_BYTES} bytes of workgroup memory",
                    info.name
                ),
            ));
        }
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features = match features {
            Features::Adapter => adapter.features().difference(
                wgpu::Features::MAPPABLE_PRIMARY_BUFFERS | wgpu::Features::all_experimental_mask(),
            ),
            Features::Decoder if timestamps => wgpu::Features::TIMESTAMP_QUERY,
            Features::Decoder => wgpu::Features::empty(),
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ecfloat"),
            required_features,
            required_limits: adapter_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(NAME, format!("cannot open {}: {e}", info.name)))?;

        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_flag.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{reason:?}: {message}"));
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
                .min(limits.max_buffer_size)
                .min(layout::MAX_SEGMENT_BYTES),
            max_workgroups: overrides
                .max_workgroups
                .unwrap_or(u32::MAX)
                .min(limits.max_compute_workgroups_per_dimension),
        };
        let lost_check = lost.clone();
        let (decode_pipeline, decode_layout) = compute_pipeline(
            &device,
            &lost_check,
            "decode",
            &decode_shader_source(compact),
            &[
                Binding::Uniform,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::Read,
                Binding::ReadWrite,
                Binding::ReadWrite,
            ],
        )?;
        let (copy_pipeline, copy_layout) = compute_pipeline(
            &device,
            &lost_check,
            "copy",
            COPY_SHADER,
            &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
        )?;
        Ok(WgpuDevice {
            instance,
            adapter,
            device,
            queue,
            info,
            limits,
            dispatch_limits,
            decode_pipeline,
            decode_layout,
            copy_pipeline,
            copy_layout,
            widen: Mutex::new(None),
            timestamps,
            compact_shader: compact,
            lost,
        })
    }

    /// The wgpu device, for clients that compute on decoded buffers.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The instance and adapter the device was opened from, for a
    /// framework that takes over an existing device.
    pub fn origin(&self) -> (&wgpu::Instance, &wgpu::Adapter) {
        (&self.instance, &self.adapter)
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Widens `elements` floats of `dtype` (BF16, F16, or F32, which is
    /// only copied) from the start of `narrow` into f32 at byte `offset`
    /// of `wide`, exactly as the `half` crate's `to_f32` converts each
    /// (`shaders/widen.wgsl`), and waits for it. With `transpose`, the
    /// source is a `[rows, columns]` matrix written as its
    /// `[columns, rows]` transpose. `offset` must be a multiple of the
    /// device's storage-buffer offset alignment; work submitted to the
    /// queue before this call runs before it.
    pub fn widen(
        &self,
        dtype: safetensors::Dtype,
        narrow: &wgpu::Buffer,
        wide: &wgpu::Buffer,
        offset: u64,
        elements: u64,
        transpose: Option<[u64; 2]>,
    ) -> Result<()> {
        let (entry_point, element_bytes) = match dtype {
            safetensors::Dtype::BF16 => (0, 2),
            safetensors::Dtype::F16 => (1, 2),
            safetensors::Dtype::F32 => (2, 4),
            other => {
                return Err(backend_error(
                    NAME,
                    format!("widening {other:?} to f32: only BF16, F16 and F32 are widened"),
                ));
            }
        };
        let [rows, columns] = transpose.unwrap_or([0, 0]);
        if transpose.is_some() && rows.checked_mul(columns) != Some(elements) {
            return Err(backend_error(
                NAME,
                format!(
                    "widening {dtype:?} to f32: a {rows}×{columns} matrix is not {elements} elements"
                ),
            ));
        }
        if elements == 0 {
            return Ok(());
        }
        let narrow_bytes = (elements * element_bytes).next_multiple_of(4);
        let wide_bytes = elements * 4;
        let alignment = u64::from(self.limits.min_storage_buffer_offset_alignment);
        // The shader's element index, stepped by a whole dispatch, must not
        // wrap: half the 32-bit range leaves room for any step.
        let problem = if elements > u64::from(u32::MAX / 2) {
            Some(format!(
                "{elements} elements are more than one dispatch counts"
            ))
        } else if narrow.size() < narrow_bytes {
            Some(format!(
                "a {}-byte source cannot hold {elements} {dtype:?} values",
                narrow.size()
            ))
        } else if offset
            .checked_add(wide_bytes)
            .is_none_or(|end| end > wide.size())
        {
            Some(format!(
                "{wide_bytes} bytes at {offset} run past the {}-byte destination",
                wide.size()
            ))
        } else if !offset.is_multiple_of(alignment) {
            Some(format!(
                "the destination offset {offset} is not a multiple of {alignment}"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(backend_error(
                NAME,
                format!("widening {dtype:?} to f32: {problem}"),
            ));
        }
        let pipelines = self.widen_pipelines()?;
        let (pipeline, bind_layout) = &pipelines.pipelines[entry_point];
        let workgroups = (elements.div_ceil(layout::WORKGROUP_SIZE as u64) as u32)
            .min(self.dispatch_limits.max_workgroups)
            .min(65_535);
        let submission = self.scoped("widening to f32", || {
            let params = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("widen params"),
                    contents: bytemuck::cast_slice(&[
                        elements as u32,
                        workgroups * layout::WORKGROUP_SIZE,
                        columns as u32,
                        rows as u32,
                    ]),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("widen"),
                layout: bind_layout,
                entries: &[
                    entry(0, buffer_range(&params, 0, 16)),
                    entry(1, buffer_range(narrow, 0, narrow_bytes)),
                    entry(2, buffer_range(wide, offset, wide_bytes)),
                ],
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("widen"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind_group, &[0]);
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
            self.queue.submit([encoder.finish()])
        })?;
        self.wait_for(submission)
    }

    fn widen_pipelines(&self) -> Result<Arc<WidenPipelines>> {
        let mut widen = self.widen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipelines) = widen.as_ref() {
            return Ok(pipelines.clone());
        }
        let bindings = [Binding::Uniform, Binding::Read, Binding::ReadWrite];
        let bf16 = compute_pipeline(
            &self.device,
            &self.lost,
            "widen_bf16",
            WIDEN_SHADER,
            &bindings,
        )?;
        let f16 = compute_pipeline(
            &self.device,
            &self.lost,
            "widen_f16",
            WIDEN_SHADER,
            &bindings,
        )?;
        let f32 = compute_pipeline(
            &self.device,
            &self.lost,
            "widen_f32",
            WIDEN_SHADER,
            &bindings,
        )?;
        let pipelines = Arc::new(WidenPipelines {
            pipelines: [bf16, f16, f32],
        });
        *widen = Some(pipelines.clone());
        Ok(pipelines)
    }

    /// Runs `work` inside error scopes and turns what they catch into one
    /// error saying what was being done.
    fn scoped<T>(&self, what: &str, work: impl FnOnce() -> T) -> Result<T> {
        scoped(&self.device, &self.lost, what, work)
    }

    fn check_lost(&self) -> Result<()> {
        check_lost(&self.lost)
    }

    /// Waits until the device has run `submission`.
    fn wait_for(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| poll_error(&self.lost, e))?;
        self.check_lost()
    }

    fn readback_buffer(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps readback buffers that a finished submission filled and copies
    /// each one's first `out.len()` bytes out; every buffer is unmapped
    /// again, whatever fails.
    fn read_mapped(&self, buffers: &mut [(&wgpu::Buffer, &mut [u8])]) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::channel();
        for (index, (buffer, _)) in buffers.iter().enumerate() {
            let sender = sender.clone();
            buffer.map_async(wgpu::MapMode::Read, .., move |result| {
                let _ = sender.send((index, result));
            });
        }
        drop(sender);
        let polled = self
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| poll_error(&self.lost, e));
        let mut mapped = vec![false; buffers.len()];
        let mut failure = polled.err();
        // Another thread's poll may be running a callback still: wait for
        // each (a callback wgpu drops without running hangs up instead).
        for (index, result) in receiver.iter().take(buffers.len()) {
            match result {
                Ok(()) => mapped[index] = true,
                Err(e) => {
                    failure.get_or_insert_with(|| {
                        driver(format!("cannot map a readback buffer: {e}"))
                    });
                }
            }
        }
        if failure.is_none() && mapped.contains(&false) {
            failure = Some(driver("mapping was cancelled".to_string()));
        }
        for ((buffer, out), mapped) in buffers.iter_mut().zip(mapped) {
            if !mapped {
                continue;
            }
            if failure.is_none() {
                match buffer.get_mapped_range(..) {
                    Ok(view) => out.copy_from_slice(&view[..out.len()]),
                    Err(e) => failure = Some(driver(format!("cannot read a readback buffer: {e}"))),
                }
            }
            buffer.unmap();
        }
        failure.map_or(Ok(()), Err)
    }

    /// Seconds between two timestamps, as resolved into `stamps`; `None`
    /// where they do not make sense (a device that did not write one).
    fn stamp_seconds(&self, stamps: [u8; 16]) -> Option<f64> {
        let [begin, end]: [u64; 2] = bytemuck::cast(stamps);
        let ticks = end.checked_sub(begin).filter(|&ticks| ticks > 0)?;
        Some(ticks as f64 * self.queue.get_timestamp_period() as f64 * 1e-9)
    }
}

/// The timestamps of a timed submission: written, resolved, read back.
pub struct Stamps {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl Stamps {
    fn new(device: &WgpuDevice) -> Option<Self> {
        device.timestamps.then(|| Stamps {
            query_set: device.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: device.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.readback_buffer(16),
        })
    }

    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.query_set, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, 16);
    }
}

/// A prepared decode: its parameters, bind groups and status words.
pub struct WgpuLaunch {
    uniform_stride: u64,
    bind_groups: Vec<wgpu::BindGroup>,
    /// Workgroups of each dispatch.
    workgroups: Vec<u32>,
    status: wgpu::Buffer,
    status_readback: wgpu::Buffer,
    blocks: usize,
    stamps: Option<Stamps>,
}

/// A submitted decode.
pub struct WgpuSubmission {
    index: wgpu::SubmissionIndex,
    timed: bool,
}

impl GpuDevice for WgpuDevice {
    type Buffer = wgpu::Buffer;
    type Launch = WgpuLaunch;
    type Submission = WgpuSubmission;

    fn name(&self) -> &'static str {
        NAME
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
            hardware_gpu: self.info.device_type != wgpu::DeviceType::Cpu,
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
                ("compact_decode_shader", self.compact_shader.into()),
            ]
            .into(),
        }
    }

    fn limits(&self) -> DispatchLimits {
        self.dispatch_limits
    }

    fn upload(&self, what: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        if bytes.len() as u64 > self.limits.max_buffer_size {
            return Err(backend_error(
                NAME,
                format!(
                    "{what} of {} bytes exceeds the device's largest buffer ({} bytes)",
                    bytes.len(),
                    self.limits.max_buffer_size
                ),
            ));
        }
        self.scoped(&format!("uploading {what}"), || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(what),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                })
        })
    }

    fn alloc(&self, bytes: u64) -> Result<wgpu::Buffer> {
        if bytes > self.limits.max_buffer_size {
            return Err(backend_error(
                NAME,
                format!(
                    "{bytes} bytes exceed the device's largest buffer ({} bytes)",
                    self.limits.max_buffer_size
                ),
            ));
        }
        self.scoped("allocating an output buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("decoded"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    fn prepare(
        &self,
        plan: &LaunchPlan<'_, wgpu::Buffer>,
        out: &wgpu::Buffer,
        timed: bool,
    ) -> Result<WgpuLaunch> {
        let storage_alignment = self.limits.min_storage_buffer_offset_alignment as u64;
        let uniform_stride = (size_of::<DispatchParams>() as u64)
            .next_multiple_of(self.limits.min_uniform_buffer_offset_alignment as u64);
        let status_bytes = (plan.blocks.max(1) as u64) * 4;
        self.scoped("preparing a decode", || {
            let status = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("status"),
                size: status_bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            // Each dispatch binds the output from an aligned offset at or
            // before its first element, which its `out_word` then skips.
            let mut params_bytes = Vec::new();
            let mut output_ranges = Vec::with_capacity(plan.dispatches.len());
            for dispatch in &plan.dispatches {
                let start = dispatch.output_offset;
                let binding_offset = start / storage_alignment * storage_alignment;
                let end = (start + dispatch.output_bytes).next_multiple_of(4);
                let mut params = dispatch.params;
                params.out_word = ((start - binding_offset) / 4) as u32;
                params_bytes.extend_from_slice(bytemuck::bytes_of(&params));
                params_bytes.resize(
                    params_bytes.len().next_multiple_of(uniform_stride as usize),
                    0,
                );
                output_ranges.push((binding_offset, end - binding_offset));
            }
            if params_bytes.is_empty() {
                params_bytes.resize(uniform_stride as usize, 0);
            }
            let params = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("decode params"),
                    contents: &params_bytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let bind_groups = plan
                .dispatches
                .iter()
                .zip(&output_ranges)
                .map(|(dispatch, &(offset, size))| {
                    let segment = dispatch.segment;
                    self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("decode"),
                        layout: &self.decode_layout,
                        entries: &[
                            entry(
                                0,
                                buffer_range(&params, 0, size_of::<DispatchParams>() as u64),
                            ),
                            entry(1, segment.blocks.as_entire_binding()),
                            entry(2, segment.tables.as_entire_binding()),
                            entry(3, segment.exceptions.as_entire_binding()),
                            entry(4, segment.head.as_entire_binding()),
                            entry(5, segment.rest.as_entire_binding()),
                            entry(6, buffer_range(out, offset, size)),
                            entry(7, status.as_entire_binding()),
                        ],
                    })
                })
                .collect();
            WgpuLaunch {
                uniform_stride,
                bind_groups,
                workgroups: plan
                    .dispatches
                    .iter()
                    .map(|d| d.params.block_count)
                    .collect(),
                status_readback: self.readback_buffer(status_bytes),
                status,
                blocks: plan.blocks as usize,
                stamps: if timed { Stamps::new(self) } else { None },
            }
        })
    }

    fn submit(
        &self,
        plan: &LaunchPlan<'_, wgpu::Buffer>,
        launch: &WgpuLaunch,
        out: &wgpu::Buffer,
        timed: bool,
    ) -> Result<WgpuSubmission> {
        let stamps = launch.stamps.as_ref().filter(|_| timed);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.scoped("recording a decode", || {
            if let Some(stamps) = stamps {
                // A pass that only writes the first timestamp, so that the
                // raw tensors' copies are timed too (as CUDA times them).
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("decode start"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &stamps.query_set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: None,
                    }),
                });
            }
            for copy in &plan.copies {
                encoder.copy_buffer_to_buffer(copy.source, 0, out, copy.offset, copy.bytes);
            }
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("decode"),
                    timestamp_writes: stamps.map(|stamps| wgpu::ComputePassTimestampWrites {
                        query_set: &stamps.query_set,
                        beginning_of_pass_write_index: None,
                        end_of_pass_write_index: Some(1),
                    }),
                });
                pass.set_pipeline(&self.decode_pipeline);
                for (index, (bind_group, &workgroups)) in launch
                    .bind_groups
                    .iter()
                    .zip(&launch.workgroups)
                    .enumerate()
                {
                    let offset = (index as u64 * launch.uniform_stride) as u32;
                    pass.set_bind_group(0, bind_group, &[offset]);
                    pass.dispatch_workgroups(workgroups, 1, 1);
                }
            }
            if let Some(stamps) = stamps {
                stamps.resolve(&mut encoder);
            }
            let status_bytes = launch.status.size();
            encoder.copy_buffer_to_buffer(
                &launch.status,
                0,
                &launch.status_readback,
                0,
                status_bytes,
            );
        })?;
        let index = self.scoped("submitting a decode", || {
            self.queue.submit([encoder.finish()])
        })?;
        Ok(WgpuSubmission {
            index,
            timed: stamps.is_some(),
        })
    }

    fn finish(&self, launch: &WgpuLaunch, submission: &WgpuSubmission) -> Result<Finished> {
        self.wait_for(submission.index.clone())?;
        let mut status = vec![0u32; launch.blocks];
        let mut stamps = [0u8; 16];
        match launch.stamps.as_ref().filter(|_| submission.timed) {
            Some(timestamps) => self.read_mapped(&mut [
                (
                    &launch.status_readback,
                    bytemuck::cast_slice_mut(&mut status),
                ),
                (&timestamps.readback, &mut stamps),
            ])?,
            None => self.read_mapped(&mut [(
                &launch.status_readback,
                bytemuck::cast_slice_mut(&mut status),
            )])?,
        }
        Ok(Finished {
            status,
            seconds: if submission.timed {
                self.stamp_seconds(stamps)
            } else {
                None
            },
        })
    }

    fn download(&self, buffer: &wgpu::Buffer, offset: u64, out: &mut [u8]) -> Result<()> {
        // Copy in pieces of at most 64 MiB through a mappable buffer.
        const PIECE: u64 = 64 << 20;
        let end = offset + out.len() as u64;
        let mut position = offset;
        while position < end {
            let start = position / 4 * 4;
            let stop = (position + PIECE).min(end).next_multiple_of(4);
            let staging = self.readback_buffer(stop - start);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, start, &staging, 0, stop - start);
            let submission =
                self.scoped("downloading", || self.queue.submit([encoder.finish()]))?;
            self.wait_for(submission)?;
            let mut piece = vec![0u8; (stop - start) as usize];
            self.read_mapped(&mut [(&staging, &mut piece)])?;
            let take = ((position + PIECE).min(end) - position) as usize;
            let skip = (position - start) as usize;
            let done = (position - offset) as usize;
            out[done..done + take].copy_from_slice(&piece[skip..skip + take]);
            position += take as u64;
        }
        Ok(())
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
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
        let workgroups = (vectors.div_ceil(layout::WORKGROUP_SIZE as u64) as u32)
            .min(self.dispatch_limits.max_workgroups)
            .min(65_535);
        let params = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("copy params"),
                contents: bytemuck::cast_slice(&[
                    vectors as u32,
                    workgroups * layout::WORKGROUP_SIZE,
                    0,
                    0,
                ]),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("copy"),
            layout: &self.copy_layout,
            entries: &[
                entry(0, buffer_range(&params, 0, 16)),
                entry(1, buffers.0.as_entire_binding()),
                entry(2, buffers.1.as_entire_binding()),
            ],
        });
        let stamps = Stamps::new(self);
        let mut device_seconds = Vec::with_capacity(repeats);
        let mut wall_seconds = Vec::with_capacity(repeats);
        // A warm-up run first.
        for run in 0..=repeats {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            let started = std::time::Instant::now();
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("copy"),
                    timestamp_writes: stamps.as_ref().map(|stamps| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: &stamps.query_set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }
                    }),
                });
                pass.set_pipeline(&self.copy_pipeline);
                pass.set_bind_group(0, &bind_group, &[0]);
                pass.dispatch_workgroups(workgroups, 1, 1);
            }
            if let Some(stamps) = &stamps {
                stamps.resolve(&mut encoder);
            }
            let submission =
                self.scoped("timing a copy", || self.queue.submit([encoder.finish()]))?;
            self.wait_for(submission)?;
            let wall = started.elapsed().as_secs_f64();
            if let Some(stamps) = &stamps {
                let mut bytes = [0u8; 16];
                self.read_mapped(&mut [(&stamps.readback, &mut bytes)])?;
                if let Some(seconds) = self.stamp_seconds(bytes).filter(|_| run > 0) {
                    device_seconds.push(seconds);
                }
            }
            if run > 0 {
                wall_seconds.push(wall);
            }
        }
        Ok(if device_seconds.len() == wall_seconds.len() {
            Timings {
                seconds: device_seconds,
                clock: Clock::DeviceTimestamps,
            }
        } else {
            Timings {
                seconds: wall_seconds,
                clock: Clock::Wall,
            }
        })
    }

    fn clock(&self) -> Clock {
        Clock::DeviceTimestamps
    }
}

fn driver(message: String) -> Error {
    Error::Driver {
        backend: NAME.to_string(),
        message,
    }
}

/// The device-lost message, once the device is lost, as an error.
fn check_lost(lost: &Mutex<Option<String>>) -> Result<()> {
    match lost.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(message) => Err(Error::DeviceLost {
            backend: NAME.to_string(),
            message: message.clone(),
        }),
        None => Ok(()),
    }
}

/// A failed wait: the device was lost, or the driver failed.
fn poll_error(lost: &Mutex<Option<String>>, error: wgpu::PollError) -> Error {
    check_lost(lost)
        .err()
        .unwrap_or_else(|| driver(format!("waiting for the device: {error}")))
}

/// Runs `work` inside error scopes and turns what they catch into one typed
/// error saying what was being done.
fn scoped<T>(
    device: &wgpu::Device,
    lost: &Mutex<Option<String>>,
    what: &str,
    work: impl FnOnce() -> T,
) -> Result<T> {
    check_lost(lost)?;
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = work();
    let validation = pollster::block_on(validation.pop());
    let memory = pollster::block_on(memory.pop());
    check_lost(lost)?;
    if let Some(error) = memory {
        return Err(Error::OutOfDeviceMemory {
            backend: NAME.to_string(),
            message: format!("{what}: {error}"),
        });
    }
    if let Some(error) = validation {
        return Err(backend_error(NAME, format!("{what}: {error}")));
    }
    Ok(value)
}

/// The pipelines of `shaders/widen.wgsl`, BF16, F16 then F32, each with
/// its bind group layout.
struct WidenPipelines {
    pipelines: [(wgpu::ComputePipeline, wgpu::BindGroupLayout); 3],
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

fn buffer_range(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size),
    })
}

/// A compute pipeline for `entry_point` of `source`, with the bindings in
/// order; the uniform binding takes a dynamic offset. A shader the driver
/// rejects is a [`Error::KernelCompile`].
fn compute_pipeline(
    device: &wgpu::Device,
    lost: &Mutex<Option<String>>,
    entry_point: &str,
    source: &str,
    bindings: &[Binding],
) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
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
    scoped(device, lost, entry_point, || {
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
    })
    .map_err(|error| match error {
        Error::Backend { message, .. } => Error::KernelCompile {
            backend: NAME.to_string(),
            message,
        },
        other => other,
    })
}
