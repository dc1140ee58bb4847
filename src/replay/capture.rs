//! The capture format of `interfaces.md` ("Captures and replay"): JSON
//! Lines, UTF-8, gzip when the file name ends in `.gz`. A header line, then
//! one input per line in arrival order. Read as a stream (a year of the fleet
//! is never held in memory); written by `mizuban export`.

use crate::device::modbus::Poll;
use crate::device::Text;
use crate::model::Timestamp;
use crate::store::{InputBody, RecordedInput};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "mizuban/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub capture: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub created_at: Timestamp,
}

/// One line after the header, as the file holds it.
#[derive(Debug, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
enum Line {
    Mqtt {
        #[serde(serialize_with = "millis::serialize")]
        arrived: Timestamp,
        topic: String,
        payload_b64: String,
    },
    Modbus {
        #[serde(serialize_with = "millis::serialize")]
        arrived: Timestamp,
        site: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        poll: Option<Poll>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One line as read: flat, so serde reads it in one pass with the strings
/// borrowed from the line (the tagged `Line` buffers a whole line before
/// choosing its variant, which was a tenth of reading a capture). Which
/// fields a source needs is checked after.
#[derive(Deserialize)]
struct LineIn<'a> {
    #[serde(borrow)]
    source: Text<'a>,
    #[serde(borrow)]
    arrived: Text<'a>,
    #[serde(default, borrow)]
    topic: Option<Text<'a>>,
    #[serde(default, borrow)]
    payload_b64: Option<Text<'a>>,
    #[serde(default, borrow)]
    site: Option<Text<'a>>,
    #[serde(default)]
    poll: Option<Poll>,
    #[serde(default)]
    error: Option<String>,
}

/// RFC 3339 with milliseconds, `Z` (any RFC 3339 is read).
mod millis {
    use crate::model::Timestamp;
    use serde::Serializer;
    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| format!("arrived {s:?}: {e}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: PathBuf, line: u64, msg: String },
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

pub struct CaptureWriter {
    out: Box<dyn Write>,
    path: PathBuf,
    pub written: u64,
}

impl CaptureWriter {
    pub fn create(path: &Path, header: &Header) -> Result<Self, CaptureError> {
        let io = |e| CaptureError::Io {
            path: path.into(),
            source: e,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        let out: Box<dyn Write> = if is_gz(path) {
            Box::new(BufWriter::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::default(),
            )))
        } else {
            Box::new(BufWriter::new(f))
        };
        let mut w = Self {
            out,
            path: path.into(),
            written: 0,
        };
        w.line(&serde_json::to_vec(header).expect("plain data serializes"))?;
        Ok(w)
    }

    fn line(&mut self, bytes: &[u8]) -> Result<(), CaptureError> {
        let io = |e| CaptureError::Io {
            path: self.path.clone(),
            source: e,
        };
        self.out.write_all(bytes).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)
    }

    pub fn write(&mut self, input: &RecordedInput) -> Result<(), CaptureError> {
        let site = || input.site.clone().unwrap_or_default();
        let line = match &input.body {
            InputBody::Mqtt { topic, payload } => Line::Mqtt {
                arrived: input.arrived,
                topic: topic.clone(),
                payload_b64: base64::engine::general_purpose::STANDARD.encode(payload),
            },
            InputBody::Poll(p) => Line::Modbus {
                arrived: input.arrived,
                site: site(),
                poll: Some(p.clone()),
                error: None,
            },
            InputBody::PollError(e) => Line::Modbus {
                arrived: input.arrived,
                site: site(),
                poll: None,
                error: Some(e.clone()),
            },
        };
        self.line(&serde_json::to_vec(&line).expect("plain data serializes"))?;
        self.written += 1;
        Ok(())
    }

    /// An MQTT publish as it arrived (a rig or simulator writing a capture).
    pub fn write_publish(&mut self, arrived: Timestamp, topic: String, payload: Vec<u8>) -> Result<(), CaptureError> {
        self.write(&RecordedInput {
            arrived,
            site: None,
            body: InputBody::Mqtt {
                topic,
                payload: payload.into(),
            },
        })
    }

    /// Flushes and ends the file (the gzip trailer); without it a `.gz` is cut.
    pub fn finish(mut self) -> Result<u64, CaptureError> {
        let io = |e| CaptureError::Io {
            path: self.path.clone(),
            source: e,
        };
        self.out.flush().map_err(io)?;
        drop(self.out);
        Ok(self.written)
    }
}

/// Counts the bytes read from the file (compressed, for a `.gz`), for the
/// progress bar.
struct Counted<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

pub struct CaptureReader {
    lines: Box<dyn BufRead>,
    path: PathBuf,
    line: u64,
    buf: String,
    pub header: Header,
    /// Bytes of the file read so far, and its size.
    pub read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub size: u64,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let io = |e| CaptureError::Io {
            path: path.into(),
            source: e,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Counted {
            inner: f,
            read: read.clone(),
        };
        let lines: Box<dyn BufRead> = if is_gz(path) {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(
                counted,
            ))))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, counted))
        };
        let mut r = Self {
            lines,
            path: path.into(),
            line: 0,
            buf: String::new(),
            header: Header {
                capture: String::new(),
                from: Timestamp::default(),
                to: Timestamp::default(),
                created_at: Timestamp::default(),
            },
            read,
            size,
        };
        if !r.next_line()? {
            return Err(r.err("empty file: no capture header".into()));
        }
        let header: Header = serde_json::from_str(r.buf.trim()).map_err(|e| r.err(format!("capture header: {e}")))?;
        if header.capture != FORMAT {
            return Err(r.err(format!("capture format {:?} is not {FORMAT:?}", header.capture)));
        }
        r.header = header;
        Ok(r)
    }

    fn err(&self, msg: String) -> CaptureError {
        CaptureError::Line {
            path: self.path.clone(),
            line: self.line,
            msg,
        }
    }

    /// Reads the next non-blank line into the buffer; `false` at the end.
    fn next_line(&mut self) -> Result<bool, CaptureError> {
        loop {
            self.buf.clear();
            let n = self.lines.read_line(&mut self.buf).map_err(|e| CaptureError::Io {
                path: self.path.clone(),
                source: e,
            })?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            if !self.buf.trim().is_empty() {
                return Ok(true);
            }
        }
    }

    /// The next input, or `None` at the end. A line that is not an input
    /// is an error naming the line: a capture is a file someone wrote, and a
    /// silent skip would change what the replay shows.
    pub fn next_input(&mut self) -> Result<Option<RecordedInput>, CaptureError> {
        if !self.next_line()? {
            return Ok(None);
        }
        let text = self.buf.trim();
        let err = |msg: String| CaptureError::Line {
            path: self.path.clone(),
            line: self.line,
            msg,
        };
        let l: LineIn = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let arrived = millis::parse(&l.arrived.0).map_err(err)?;
        Ok(Some(match &*l.source.0 {
            "mqtt" => {
                let (Some(topic), Some(b64)) = (l.topic, l.payload_b64) else {
                    return Err(err("an mqtt line needs topic and payload_b64".into()));
                };
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(b64.0.as_bytes())
                    .map_err(|e| err(format!("payload_b64: {e}")))?;
                RecordedInput {
                    arrived,
                    site: None,
                    body: InputBody::Mqtt {
                        topic: topic.0.into_owned(),
                        payload: payload.into(),
                    },
                }
            }
            "modbus" => RecordedInput {
                arrived,
                site: Some(
                    l.site
                        .ok_or_else(|| err("a modbus line needs site".into()))?
                        .0
                        .into_owned(),
                ),
                body: match (l.poll, l.error) {
                    (Some(p), None) => InputBody::Poll(p),
                    (None, Some(e)) => InputBody::PollError(e),
                    _ => return Err(err("a modbus line has exactly one of poll and error".into())),
                },
            },
            other => {
                return Err(err(format!(
                    "unknown source {:?}, expected \"mqtt\" or \"modbus\"",
                    other.chars().take(32).collect::<String>()
                )))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::modbus::{Bit, PollBlock};

    #[test]
    fn a_capture_written_reads_back_the_same_plain_and_gzipped() {
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let inputs = vec![
            RecordedInput {
                arrived: t("2026-12-01T03:00:02.125Z"),
                site: None,
                body: InputBody::Mqtt {
                    topic: "akita/v1/dma/B17/AKT-DMA-017/telemetry".into(),
                    // Not UTF-8: the exact bytes survive.
                    payload: bytes::Bytes::from_static(b"{\"schema\":\xff"),
                },
            },
            RecordedInput {
                arrived: t("2026-12-01T03:00:05Z"),
                site: Some("MP-0190".into()),
                body: InputBody::Poll(Poll {
                    coils: vec![PollBlock {
                        start: 0,
                        values: vec![Bit(true), Bit(false)],
                    }],
                    input: vec![PollBlock {
                        start: 0,
                        values: vec![120, 65535],
                    }],
                    ..Default::default()
                }),
            },
            RecordedInput {
                arrived: t("2026-12-01T03:00:09Z"),
                site: Some("MP-0190".into()),
                body: InputBody::PollError("timeout".into()),
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        for name in ["c.jsonl", "c.jsonl.gz"] {
            let path = dir.path().join(name);
            let header = Header {
                capture: FORMAT.into(),
                from: t("2026-12-01T03:00:00Z"),
                to: t("2026-12-01T04:00:00Z"),
                created_at: t("2026-12-01T05:00:00Z"),
            };
            let mut w = CaptureWriter::create(&path, &header).unwrap();
            for i in &inputs {
                w.write(i).unwrap();
            }
            assert_eq!(w.finish().unwrap(), 3);
            let mut r = CaptureReader::open(&path).unwrap();
            assert_eq!(r.header, header);
            let mut back = Vec::new();
            while let Some(i) = r.next_input().unwrap() {
                back.push(i);
            }
            assert_eq!(back, inputs, "{name}");
        }
        let text = std::fs::read_to_string(dir.path().join("c.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(r#"{"capture":"mizuban/1","from":"#),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            r#"{"source":"mqtt","arrived":"2026-12-01T03:00:02.125Z","topic":"akita/v1/dma/B17/AKT-DMA-017/telemetry","payload_b64":"eyJzY2hlbWEiOv8="}"#
        );
        assert_eq!(
            lines[3],
            r#"{"source":"modbus","arrived":"2026-12-01T03:00:09.000Z","site":"MP-0190","error":"timeout"}"#
        );
    }

    #[test]
    fn a_broken_line_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"capture\":\"mizuban/1\",\"from\":\"2026-12-01T00:00:00Z\",\"to\":\"2026-12-01T01:00:00Z\",\"created_at\":\"2026-12-01T01:00:00Z\"}\n{\"source\":\"carrier-pigeon\"}\n",
        )
        .unwrap();
        let mut r = CaptureReader::open(&path).unwrap();
        let e = r.next_input().unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2:"), "{e}");
    }
}
