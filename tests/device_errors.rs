//! A device that fails is not a corrupt file: out-of-memory, a lost device
//! or a driver error reach the caller as themselves, and a job the device
//! found corrupt is reported with its file and tensor.

mod common;

use std::any::Any;

use ecfloat::backend::{
    Backend, BackendInfo, CpuBackend, DecodeJob, DeviceBuffer, DeviceTensor, Timings,
};
use ecfloat::codec::{BlockIndex, CodecError, EncodedView, StreamProblem};
use ecfloat::runtime::{Model, ModelOptions};
use ecfloat::{Error, Result};

/// The CPU backend with a device that fails as told.
struct FailingDevice {
    cpu: CpuBackend,
    upload: Option<fn() -> Error>,
    decode: Option<fn() -> Error>,
}

fn out_of_memory() -> Error {
    Error::OutOfDeviceMemory {
        backend: "test".to_string(),
        message: "allocating the head plane".to_string(),
    }
}

fn device_lost() -> Error {
    Error::DeviceLost {
        backend: "test".to_string(),
        message: "reset".to_string(),
    }
}

fn corrupt_second_job() -> Error {
    Error::CorruptJob {
        backend: "test".to_string(),
        job: 1,
        source: CodecError::CorruptStream {
            block: 0,
            problem: StreamProblem::Overrun,
        },
    }
}

impl Backend for FailingDevice {
    fn name(&self) -> &'static str {
        "test"
    }

    fn info(&self) -> BackendInfo {
        self.cpu.info()
    }

    fn output_alignment(&self) -> u64 {
        self.cpu.output_alignment()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>> {
        match self.upload {
            Some(error) => Err(error()),
            None => self.cpu.upload(tensor, index),
        }
    }

    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>> {
        self.cpu.upload_raw(bytes)
    }

    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>> {
        self.cpu.alloc(bytes)
    }

    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()> {
        match self.decode {
            Some(error) => Err(error()),
            None => self.cpu.decode(jobs, out),
        }
    }

    fn decode_to_host(
        &self,
        tensor: &EncodedView,
        index: &BlockIndex,
        out: &mut [u8],
    ) -> Result<()> {
        match self.decode {
            Some(error) => Err(error()),
            None => self.cpu.decode_to_host(tensor, index, out),
        }
    }

    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        self.cpu.download(buffer, offset, out)
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
        self.cpu.time_copy(bytes, repeats)
    }
}

fn compressed_sample(directory: &std::path::Path) -> std::path::PathBuf {
    let source = common::write_sample(directory);
    let compressed = directory.join("sample.ecf.safetensors");
    ecfloat::container::compress_file(&source, &compressed, &Default::default()).unwrap();
    compressed
}

#[test]
fn verify_reports_a_lost_device_as_such() {
    let directory = tempfile::tempdir().unwrap();
    let path = compressed_sample(directory.path());
    let device = FailingDevice {
        cpu: CpuBackend::new(),
        upload: None,
        decode: Some(device_lost),
    };
    let checks =
        ecfloat::tools::verify::verify_file_on(&path, &device, &Default::default()).unwrap();
    let errors: Vec<&Error> = checks
        .tensors
        .iter()
        .filter_map(|t| t.error.as_ref())
        .collect();
    assert!(!errors.is_empty());
    for error in errors {
        assert!(matches!(error, Error::DeviceLost { .. }), "{error:?}");
        assert!(error.is_device_error());
    }
}

#[test]
fn a_model_that_does_not_fit_is_out_of_memory_not_corrupt() {
    let directory = tempfile::tempdir().unwrap();
    let path = compressed_sample(directory.path());
    let device = FailingDevice {
        cpu: CpuBackend::new(),
        upload: Some(out_of_memory),
        decode: None,
    };
    let error = Model::open(&path, &device, ModelOptions::default())
        .err()
        .expect("the upload fails");
    assert!(
        matches!(error, Error::OutOfDeviceMemory { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("sample.ecf.safetensors: tensor ") && message.contains("head plane"),
        "names the file and tensor: {message}"
    );
}

#[test]
fn a_corrupt_job_names_its_file_and_tensor() {
    let directory = tempfile::tempdir().unwrap();
    let path = compressed_sample(directory.path());
    let device = FailingDevice {
        cpu: CpuBackend::new(),
        upload: None,
        decode: Some(corrupt_second_job),
    };
    let model = Model::open(&path, &device, ModelOptions::default()).unwrap();
    let group = (0..model.groups().len())
        .find(|&g| model.groups()[g].tensors.len() >= 2)
        .expect("a group of two tensors or more");
    let second = &model.tensors()[model.groups()[group].tensors[1]].name;
    let error = model
        .decode_group(group, model.group_buffer().unwrap())
        .err()
        .expect("the decode fails");
    match &error {
        Error::Codec {
            path: error_path,
            tensor: Some(tensor),
            source: CodecError::CorruptStream { .. },
        } => {
            assert_eq!(error_path, &path);
            assert_eq!(tensor, second);
        }
        other => panic!("{other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(second.as_str()) && message.contains("block 0"),
        "{message}"
    );
}
