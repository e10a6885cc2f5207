//! Loads the guest ELF and refuses images that could diverge.
//!
//! At CPL3 `rdtsc`, `rdtscp`, `rdrand`, `rdseed`, `rdpmc` and `cpuid` cannot
//! be trapped on this machine kind and return host-specific values, so a
//! guest that executes one would silently diverge between primary and
//! backup. The loader disassembles the image's code and makes that an error.

use crate::machine::MachineError;
use guest_abi as abi;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSegment, SectionFlags, SectionKind, SegmentFlags};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PF_X: u32 = 1;
const SHF_EXECINSTR: u64 = 0x4;
const FORBIDDEN: [(Mnemonic, &str); 6] = [
    (Mnemonic::Rdtsc, "rdtsc"),
    (Mnemonic::Rdtscp, "rdtscp"),
    (Mnemonic::Rdrand, "rdrand"),
    (Mnemonic::Rdseed, "rdseed"),
    (Mnemonic::Rdpmc, "rdpmc"),
    (Mnemonic::Cpuid, "cpuid"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read guest image {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("guest image is not a usable x86-64 ELF executable: {0}")]
    BadElf(String),
    #[error(
        "guest image refused: forbidden instruction `{instruction}` at file offset {offset:#x} \
         (address {address:#x}); it reads host state that cannot be recorded or replayed"
    )]
    ForbiddenInstruction {
        instruction: &'static str,
        offset: u64,
        address: u64,
    },
}

/// A loadable piece of the image.
struct Segment {
    address: u64,
    bytes: Vec<u8>,
}

/// A checked guest image: its segments, entry point and content hash.
pub struct GuestImage {
    segments: Vec<Segment>,
    entry: u64,
    hash: [u8; 32],
}

impl GuestImage {
    pub fn from_file(path: &Path) -> Result<GuestImage, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        GuestImage::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<GuestImage, LoadError> {
        let bad = |why: String| LoadError::BadElf(why);
        let file = object::File::parse(bytes).map_err(|e| bad(e.to_string()))?;
        if file.architecture() != object::Architecture::X86_64 || !file.is_64() {
            return Err(bad(format!("architecture {:?}", file.architecture())));
        }
        if file.kind() != object::ObjectKind::Executable {
            return Err(bad(format!(
                "kind {:?}, expected a static executable",
                file.kind()
            )));
        }
        let mut segments = Vec::new();
        for segment in file.segments() {
            let (address, mem_size) = (segment.address(), segment.size());
            if mem_size == 0 {
                continue;
            }
            let end = address
                .checked_add(mem_size)
                .ok_or_else(|| bad("segment overflows".into()))?;
            if address < abi::IMAGE_BASE || end > abi::IMAGE_LIMIT {
                return Err(bad(format!(
                    "segment {address:#x}..{end:#x} is outside {:#x}..{:#x}",
                    abi::IMAGE_BASE,
                    abi::IMAGE_LIMIT
                )));
            }
            let data = segment.data().map_err(|e| bad(e.to_string()))?;
            let mut seg_bytes = data.to_vec();
            seg_bytes.resize(mem_size as usize, 0);
            segments.push(Segment {
                address,
                bytes: seg_bytes,
            });
        }
        let entry = file.entry();
        if !segments
            .iter()
            .any(|s| (s.address..s.address + s.bytes.len() as u64).contains(&entry))
        {
            return Err(bad(format!(
                "entry point {entry:#x} is not inside a loaded segment"
            )));
        }
        check_code(&file)?;
        Ok(GuestImage {
            segments,
            entry,
            hash: *blake3::hash(bytes).as_bytes(),
        })
    }

    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// BLAKE3 of the image file: primary and backup must run the same one.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    pub(crate) fn load_into(&self, memory: &GuestMemoryMmap) -> Result<(), MachineError> {
        for segment in &self.segments {
            memory
                .write_slice(&segment.bytes, GuestAddress(segment.address))
                .map_err(|e| {
                    MachineError::Memory(format!("load segment at {:#x}: {e}", segment.address))
                })?;
        }
        Ok(())
    }
}

/// Disassembles every executable section (or, for an image without section
/// headers, every executable segment) and fails on the first forbidden
/// instruction.
fn check_code(file: &object::File) -> Result<(), LoadError> {
    let mut ranges = Vec::new();
    for section in file.sections() {
        let executable = match section.flags() {
            SectionFlags::Elf { sh_flags, .. } => sh_flags.0 & SHF_EXECINSTR != 0,
            _ => section.kind() == SectionKind::Text,
        };
        if executable {
            if let (Some((offset, _)), Ok(data)) = (section.file_range(), section.data()) {
                ranges.push((offset, section.address(), data));
            }
        }
    }
    if ranges.is_empty() {
        // No section headers: sweep executable segments, from the entry
        // point where it lies inside one (what precedes it there is usually
        // the ELF headers, not code).
        for segment in file.segments() {
            if matches!(segment.flags(), SegmentFlags::Elf { p_flags, .. } if p_flags.0 & PF_X != 0)
            {
                let data = segment
                    .data()
                    .map_err(|e| LoadError::BadElf(e.to_string()))?;
                let (offset, address) = (segment.file_range().0, segment.address());
                let skip = match file.entry().checked_sub(address) {
                    Some(skip) if skip < data.len() as u64 => skip,
                    _ => 0,
                };
                ranges.push((offset + skip, address + skip, &data[skip as usize..]));
            }
        }
    }
    for (file_offset, address, code) in ranges {
        let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        for instruction in &mut decoder {
            if let Some((_, name)) = FORBIDDEN.iter().find(|(m, _)| *m == instruction.mnemonic()) {
                return Err(LoadError::ForbiddenInstruction {
                    instruction: name,
                    offset: file_offset + (instruction.ip() - address),
                    address: instruction.ip(),
                });
            }
        }
    }
    Ok(())
}
