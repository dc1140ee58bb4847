//! Identifier newtypes. Each validates its text once, at the edge, so the rest of
//! the service never re-checks (or mixes up) a site id and a device id.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id {value:?} is longer than 64 characters")]
    TooLong { kind: &'static str, value: String },
    #[error("{kind} id {value:?} may only hold ASCII letters, digits, '-', '_' and '.'")]
    BadChar { kind: &'static str, value: String },
}

fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > 64 {
        return Err(IdError::TooLong {
            kind,
            value: s.chars().take(64).collect(),
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(IdError::BadChar {
            kind,
            value: s.to_string(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        /// Cheap to clone (`Arc<str>`): ids are copied into every reading and alarm.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate($kind, s)?;
                Ok(Self(Arc::from(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(SiteId, "site");
id_type!(DeviceId, "device");

/// A measured or derived quantity at a site: `{site}.{point}`, e.g. `B17.p` or
/// `MP-0123.level`. The site is part of the id so that every piece of per-point
/// state can be partitioned by site.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PointId(Arc<str>);

impl PointId {
    pub fn new(site: &SiteId, point: &str) -> Result<Self, IdError> {
        validate("point", point)?;
        Ok(Self(Arc::from(format!("{}.{}", site.as_str(), point))))
    }
    /// Parses the `{site}.{point}` form used in URLs.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate("point", s)?;
        if !s.contains('.') {
            return Err(IdError::BadChar {
                kind: "point",
                value: s.to_string(),
            });
        }
        Ok(Self(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The point's name inside its site (`p` for `B17.p`).
    pub fn local(&self) -> &str {
        self.0.split_once('.').map(|(_, p)| p).unwrap_or(&self.0)
    }
}
impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PointId({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!(SiteId::new("MP-0123").is_ok());
        assert_eq!(SiteId::new(""), Err(IdError::Empty { kind: "site" }));
        assert!(matches!(DeviceId::new("a/b"), Err(IdError::BadChar { .. })));
        assert!(matches!(DeviceId::new(&"x".repeat(65)), Err(IdError::TooLong { .. })));
        let p = PointId::new(&SiteId::new("B17").unwrap(), "p").unwrap();
        assert_eq!(p.as_str(), "B17.p");
        assert_eq!(p.local(), "p");
        assert!(PointId::parse("nodot").is_err());
    }
}
