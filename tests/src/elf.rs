//! Minimal static x86-64 ELF executables for tests: one PT_LOAD segment at
//! 0x100000 holding `code`, entry at its first byte, no section headers.

const BASE: u64 = 0x10_0000;
const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;

/// Offset in the file at which `code` starts.
pub const CODE_OFFSET: u64 = EHDR_LEN + PHDR_LEN;

pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let file_len = CODE_OFFSET + code.len() as u64;
    let mut elf = Vec::with_capacity(file_len as usize);
    // e_ident: magic, 64-bit, little endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + CODE_OFFSET).to_le_bytes()); // e_entry
    elf.extend_from_slice(&EHDR_LEN.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

    // Program header: PT_LOAD, R+X, the whole file at BASE.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    elf
}
