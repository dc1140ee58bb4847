//! Device models as data. A profile under `devices/` says which topics a model
//! publishes on, how its JSON maps to points, what its alarm codes and bits mean
//! and how often it reports. This module loads profiles and decodes payloads with
//! them; it is pure (bytes and time in, values out) so it is fuzzed and benched
//! without a broker. Adding a second vendor's logger is a new profile file.

mod decode;
mod path;
mod profile;

pub use decode::{
    decode, DecodeError, Decoded, DeviceEvent, MessageIdent, RawReading, SampleProblem,
};
pub use path::JsonPath;
pub use profile::{
    CommSpec, ConditionSpec, MessageKind, MessageSpec, PointSpec, Priority, Profile, ProfileError,
    TopicTemplate, ValueType,
};
