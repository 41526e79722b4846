//! Backends decode coded tensors on a device: the CPU, a GPU through wgpu,
//! or an NVIDIA GPU through CUDA. All of them implement [`Backend`], and all
//! of them must return exactly the bytes the CPU reference decoder does.
//!
//! The contract is small: upload a coded tensor once, decode it (or several
//! at once) into a device buffer, download. A tensor stored raw can be
//! uploaded too; decoding it is a copy, so a model's layer decodes in one
//! call whatever its tensors are. Handles are opaque boxes that each backend
//! downcasts to its own types.

use std::any::Any;

use crate::codec::{BlockIndex, EncodedView};
use crate::error::{Error, Result};

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gpu;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use cpu::CpuBackend;

/// What `ecf backends` prints about a device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendInfo {
    pub backend: &'static str,
    pub device: String,
    pub driver: String,
    /// Whether it decodes on a GPU: not on the CPU, whether by the reference
    /// decoder or through a GPU driver that runs on the CPU (lavapipe).
    pub hardware_gpu: bool,
    /// Limits that bound what one decode can do, by name.
    pub limits: std::collections::BTreeMap<&'static str, serde_json::Value>,
}

/// A tensor resident on a device, coded or raw.
pub trait DeviceTensor: Any + Send + Sync {
    fn decoded_bytes(&self) -> u64;
    /// Device bytes it occupies.
    fn resident_bytes(&self) -> u64;
    fn as_any(&self) -> &dyn Any;
}

/// A decode the device is still running; `wait` returns when it is done,
/// with the error of the first block that did not decode.
pub trait PendingDecode: Any + Send {
    fn wait(self: Box<Self>) -> Result<()>;
    /// The backend's own handle (downcast to `GpuPending<…>`).
    fn as_any(&self) -> &dyn Any;
}

/// A decode that finished before its handle was returned.
pub struct Finished;

impl PendingDecode for Finished {
    fn wait(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What measured a timed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Timestamps the GPU wrote before and after the work (wgpu timestamp
    /// queries).
    DeviceTimestamps,
    /// CUDA events recorded on the stream before and after the work.
    CudaEvents,
    /// The host's clock, from handing over the work until it finished.
    Wall,
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Clock::DeviceTimestamps => "device timestamps",
            Clock::CudaEvents => "CUDA events",
            Clock::Wall => "wall clock",
        })
    }
}

/// Seconds of each timed run, and the clock that measured them.
#[derive(Clone, Debug)]
pub struct Timings {
    pub seconds: Vec<f64>,
    pub clock: Clock,
}

/// A device buffer that decoded bytes are written to.
pub trait DeviceBuffer: Any + Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
}

/// Decode `tensor` into the output buffer starting at byte `offset`.
#[derive(Clone, Copy)]
pub struct DecodeJob<'a> {
    pub tensor: &'a dyn DeviceTensor,
    pub offset: u64,
}

pub trait Backend: Send + Sync {
    /// `cpu`, `wgpu` or `cuda`.
    fn name(&self) -> &'static str;
    fn info(&self) -> BackendInfo;
    /// The backend itself, for clients that work on its device directly
    /// (downcast to `WgpuBackend`, `CudaBackend`, …).
    fn as_any(&self) -> &dyn Any;
    /// Copies a coded tensor, whose index was parsed (and so validated)
    /// from `tensor`, to the device.
    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>>;
    /// Copies a tensor stored raw to the device; decoding it copies it.
    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>>;
    /// A buffer of `bytes` bytes to decode into. Its contents are
    /// unspecified until a decode writes them (a GPU backend does not
    /// clear it): a decode writes every byte of each job's range, up to
    /// the alignment word past its end, and no other byte.
    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>>;
    /// Decode jobs start at multiples of this many bytes, and a job may
    /// write zeros past its tensor's end up to the next multiple of it: 4
    /// on GPUs, which write whole 32-bit words; 1 on the CPU.
    fn output_alignment(&self) -> u64;
    /// Decodes every job into `out`; the jobs' output ranges must lie in
    /// `out` and must not overlap. Returns once the device has finished.
    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()>;
    /// Starts decoding every job into `out` and returns without waiting
    /// where the device can run it alongside other work (the caller must
    /// not read `out` before `wait` returns). Backends that cannot decode
    /// asynchronously finish the decode first.
    fn decode_async(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
    ) -> Result<Box<dyn PendingDecode>> {
        self.decode(jobs, out)?;
        Ok(Box::new(Finished))
    }
    /// Whether [`decode_async`](Self::decode_async) returns before the
    /// decode ends, so that a decode can overlap the caller's work.
    fn decodes_asynchronously(&self) -> bool {
        false
    }
    /// Copies `out.len()` bytes starting at `offset` back to the host.
    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()>;

    /// Decodes one tensor into host memory: upload, decode, download.
    /// `out` must hold exactly the tensor's decoded bytes. Backends whose
    /// memory is the host's decode in place.
    fn decode_to_host(
        &self,
        tensor: &EncodedView,
        index: &BlockIndex,
        out: &mut [u8],
    ) -> Result<()> {
        let uploaded = self.upload(tensor, index)?;
        if uploaded.decoded_bytes() != out.len() as u64 {
            return Err(backend_error(
                self.name(),
                "host buffer does not match the tensor's size",
            ));
        }
        let buffer = self.alloc(out.len() as u64)?;
        self.decode(
            &[DecodeJob {
                tensor: uploaded.as_ref(),
                offset: 0,
            }],
            buffer.as_ref(),
        )?;
        self.download(buffer.as_ref(), 0, out)
    }

    /// Seconds each of `repeats` runs of `decode(jobs, out)` takes — the
    /// whole decode, raw tensors' copies included — after a warm-up run;
    /// device-timed where the backend can.
    fn time_decode(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
        repeats: usize,
    ) -> Result<Timings> {
        self.decode(jobs, out)?;
        let seconds = (0..repeats)
            .map(|_| {
                let started = std::time::Instant::now();
                self.decode(jobs, out)?;
                Ok(started.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        Ok(Timings {
            seconds,
            clock: Clock::Wall,
        })
    }

    /// Seconds each of `repeats` device-to-device copies of `bytes` bytes
    /// takes: the memory-bound reference decode speed is reported against.
    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings>;
}

/// Checks that jobs start on multiples of `alignment` (the backend's
/// [`Backend::output_alignment`]), fit their buffer and do not overlap;
/// every backend calls this before its device sees the jobs.
pub fn check_jobs(
    backend: &str,
    jobs: &[DecodeJob],
    buffer_len: u64,
    alignment: u64,
) -> Result<()> {
    if let Some(job) = jobs.iter().find(|job| job.offset % alignment != 0) {
        return Err(backend_error(
            backend,
            format!(
                "decode offset {} is not a multiple of {alignment}",
                job.offset
            ),
        ));
    }
    let mut ranges: Vec<(u64, u64)> = jobs
        .iter()
        .map(|job| {
            (
                job.offset,
                job.offset.saturating_add(job.tensor.decoded_bytes()),
            )
        })
        .collect();
    ranges.sort_unstable();
    let mut previous_end = 0;
    for &(start, end) in &ranges {
        if end > buffer_len {
            return Err(backend_error(
                backend,
                format!("decode into bytes {start}..{end} of a {buffer_len}-byte buffer"),
            ));
        }
        if start < previous_end {
            return Err(backend_error(backend, "decode jobs overlap in the output"));
        }
        previous_end = end;
    }
    Ok(())
}

/// The end of `len` bytes from `offset` of a buffer of `buffer_len`
/// bytes, or an error if they do not lie in it.
pub(crate) fn check_download(
    backend: &str,
    buffer_len: u64,
    offset: u64,
    len: usize,
) -> Result<u64> {
    offset
        .checked_add(len as u64)
        .filter(|&end| end <= buffer_len)
        .ok_or_else(|| {
            backend_error(
                backend,
                format!("download of bytes {offset}.. (+{len}) past the end of a {buffer_len}-byte buffer"),
            )
        })
}

pub(crate) fn backend_error(backend: &str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend: backend.to_string(),
        message: message.into(),
    }
}

/// A decode that would write `bytes` at byte `offset` of an output of
/// `output_len` bytes, past its end: refused by every backend itself.
pub(crate) fn overrun_error(backend: &str, bytes: u64, offset: u64, output_len: u64) -> Error {
    backend_error(
        backend,
        format!(
            "a decode would write {bytes} bytes at byte {offset} of a {output_len}-byte output"
        ),
    )
}

/// The backend cannot be used on this machine, and why.
pub fn unavailable(backend: &str, reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: backend.to_string(),
        reason: reason.into(),
    }
}

/// Downcasts a handle to the backend's own type.
pub(crate) fn downcast<'a, T: 'static>(backend: &str, any: &'a dyn Any) -> Result<&'a T> {
    any.downcast_ref::<T>()
        .ok_or_else(|| backend_error(backend, "handle belongs to another backend"))
}

/// Backends that can be asked for by name.
pub const BACKEND_NAMES: [&str; 3] = ["cpu", "wgpu", "cuda"];

/// What `--backend` takes: a backend's name, or `auto`.
pub const BACKEND_CHOICES: [&str; 4] = ["auto", "cpu", "wgpu", "cuda"];

/// The order in which `auto` tries the backends.
const AUTO_ORDER: [&str; 3] = ["cuda", "wgpu", "cpu"];

/// Whether `auto` takes a backend that opened: a GPU, or the CPU decoder —
/// never a GPU driver emulated on the CPU, which is far slower than it.
fn auto_takes(info: &BackendInfo) -> bool {
    info.hardware_gpu || info.backend == "cpu"
}

/// The backend `auto` picks among those that opened, given as (name, info).
pub fn auto_pick<'a>(
    opened: impl IntoIterator<Item = (&'a str, &'a BackendInfo)>,
) -> Option<&'a str> {
    let opened: Vec<(&str, &BackendInfo)> = opened.into_iter().collect();
    AUTO_ORDER.into_iter().find(|name| {
        opened
            .iter()
            .any(|(opened, info)| opened == name && auto_takes(info))
    })
}

/// Opens a backend by name: `cpu`, `wgpu`, `cuda`, or `auto`: the first of
/// CUDA, wgpu on a hardware GPU, and the CPU.
pub fn open(name: &str) -> Result<Box<dyn Backend>> {
    match name {
        "cpu" => Ok(Box::new(CpuBackend::new())),
        "wgpu" => open_wgpu(),
        "cuda" => open_cuda(),
        "auto" => {
            for name in AUTO_ORDER {
                if let Ok(backend) = open(name)
                    && auto_takes(&backend.info())
                {
                    return Ok(backend);
                }
            }
            Ok(Box::new(CpuBackend::new()))
        }
        other => Err(Error::Usage(format!(
            "unknown backend {other:?}; choose one of {}",
            BACKEND_CHOICES.join(", ")
        ))),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Box<dyn Backend>> {
    Ok(Box::new(cuda::open()?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Box<dyn Backend>> {
    Err(unavailable(
        "cuda",
        "not compiled in (build with the `cuda` feature)",
    ))
}

#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<Box<dyn Backend>> {
    Ok(Box::new(wgpu::open()?))
}

#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> Result<Box<dyn Backend>> {
    Err(unavailable(
        "wgpu",
        "not compiled in (build with the `wgpu` feature)",
    ))
}

/// `backend` as the decode function the container layer takes
/// ([`crate::container::Decoder`]): each window of blocks is decoded on the
/// device and brought back to the host.
pub fn decoder(
    backend: &dyn Backend,
) -> impl Fn(&EncodedView, &BlockIndex, &mut [u8]) -> Result<()> + Sync + '_ {
    move |view, index, out| backend.decode_to_host(view, index, out)
}

/// Decodes one tensor into a new host vector: the round trip every
/// conformance check makes.
pub fn decode_to_host(
    backend: &dyn Backend,
    tensor: &EncodedView,
    index: &BlockIndex,
) -> Result<Vec<u8>> {
    let len = tensor.params.decoded_bytes();
    let mut host = Vec::new();
    host.try_reserve_exact(len as usize)
        .map_err(|_| backend_error(backend.name(), format!("cannot allocate {len} host bytes")))?;
    host.resize(len as usize, 0);
    backend.decode_to_host(tensor, index, &mut host)?;
    Ok(host)
}
