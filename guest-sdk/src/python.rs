//! Python-compatible encodings, shared by the host and the native worker so that what they
//! write is byte for byte what cjm-substrate writes: JSON as the `json` module produces it
//! ([`json`] for hashes and manifests, [`wire`] for HTTP bodies, stream lines and headers),
//! `JobError` as the Python worker puts it on the wire ([`job_error`]), timestamps as
//! `datetime` and `logging` print them ([`time`]), content hashes as its `hashing` module
//! ([`hash`]). Pure std + serde_json (and sha2), so the guest side can use them too.

pub mod hash;
pub mod job_error;
pub mod json;
pub mod time;
pub mod wire;
