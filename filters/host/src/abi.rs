//! The proxy-wasm header-map and buffer imports, declared here so header values (and names)
//! are read as bytes: the SDK's `get_map`/`get_map_value` (and even `get_map_bytes`, for names)
//! turn the bytes into `String` by unwrapping the UTF-8 check, and a Latin-1 byte in a header would panic the
//! VM. The SDK also panics on a status it does not expect (`get_buffer`, and
//! `get_http_request_body` unwraps on top, and `get_property` panics on any status but
//! Ok/NotFound/SerializationFailure/InternalFailure); these return it instead.
//!
//! This is the only `unsafe` code of the filters. Each block says why it is sound.

#![allow(unsafe_code)]

use std::ptr::null_mut;

use proxy_wasm::types::{BufferType, MapType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
}

/// proxy-wasm `Status::Ok`.
const OK: u32 = 0;
/// proxy-wasm `Status::NotFound`.
const NOT_FOUND: u32 = 1;

/// Takes ownership of a buffer the host filled through the module's allocator.
///
/// # Safety
/// `data` must be null or a pointer the host obtained from this module's exported
/// `proxy_on_memory_allocate(size)` (the SDK's allocator: `Vec::<u8>::with_capacity(size)`,
/// then forgotten), not freed since, with `size` the very size it asked for. Then the
/// allocation has exactly the layout of a `Vec<u8>` of capacity `size`, and rebuilding the
/// `Vec` hands it back to the same global allocator on drop.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: see the function's contract; the host wrote `size` initialised bytes.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Every pair of a header map, names and values as bytes (empty if the host refuses).
pub fn header_map_pairs(map: MapType) -> Vec<(String, Vec<u8>)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: both out-pointers point at live locals of the right types; the host writes a
    // buffer pointer and its size there (or leaves them null/0) and reads nothing else.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    // SAFETY: on return the host handed over a buffer from our allocator (or null).
    let buffer = unsafe { take_buffer(data, size) };
    if status != OK {
        return Vec::new();
    }
    crate::decode_header_pairs(&buffer)
}

/// One header value as bytes: `None` when absent (or when the host refuses the call).
pub fn header_map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `name` is a live byte slice for the duration of the call; the out-pointers
    // point at live locals; the host only writes a buffer pointer and its size.
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    // SAFETY: as in `header_map_pairs`.
    let buffer = unsafe { take_buffer(data, size) };
    (status == OK).then_some(buffer)
}

/// Bytes `start .. start + max_size` of a host buffer (fewer when it holds fewer): `Some(empty)`
/// when the buffer is absent or empty (`NotFound`), `None` when the host refuses the call with
/// another status (a wrong context or phase). Never panics.
pub fn buffer_bytes(buffer: BufferType, start: usize, max_size: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the out-pointers point at live locals of the right types; the host writes a
    // buffer pointer and its size there (or leaves them null/0) and reads nothing else.
    let status = unsafe { proxy_get_buffer_bytes(buffer, start, max_size, &mut data, &mut size) };
    // SAFETY: as in `header_map_pairs`: the host handed over a buffer from our allocator (or
    // null), which is taken back even when the status says the call failed.
    let bytes = unsafe { take_buffer(data, size) };
    match status {
        OK => Some(bytes),
        NOT_FOUND => Some(Vec::new()),
        _ => None,
    }
}

/// A property of the stream or connection (Envoy's attributes, e.g. `["connection",
/// "sha256_peer_certificate_digest"]`), as the bytes Envoy serialises it to (strings as they
/// are). `None` when absent or when the host refuses the call. Never panics.
pub fn property_bytes(path: &[&str]) -> Option<Vec<u8>> {
    // the path's segments, each followed by a NUL, the last NUL dropped (as the SDK does)
    let mut serialized: Vec<u8> = Vec::new();
    for part in path {
        serialized.extend_from_slice(part.as_bytes());
        serialized.push(0);
    }
    serialized.pop();
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: `serialized` is a live byte slice for the duration of the call; the
    // out-pointers point at live locals; the host only writes a buffer pointer and its size.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    // SAFETY: as in `header_map_pairs`: the host handed over a buffer from our allocator (or
    // null), taken back whatever the status.
    let bytes = unsafe { take_buffer(data, size) };
    (status == OK && !data.is_null()).then_some(bytes)
}
