//! Modbus register maps (the `[modbus]` part of a profile) and pure decoding of
//! what a poll read. Planning coalesces contiguous addresses into few requests;
//! decoding applies type, word order (32-bit values high word first), scale,
//! and the "not available" markers (`0xFFFF` unsigned, `0x8000` signed), which
//! become `bad` readings rather than values.

use crate::model::{Quality, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
    /// Most a single request may read (Modbus spec: 2000 bits, 125 registers).
    pub fn max_count(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegType {
    Bool,
    U16,
    I16,
    U32,
}

impl RegType {
    pub fn width(self) -> u16 {
        match self {
            RegType::U32 => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusPoint {
    pub point: String,
    pub table: Table,
    pub address: u16,
    #[serde(rename = "type")]
    pub reg_type: RegType,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// A run of bits whose bit n is the condition with `bit = n` in the profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitBlock {
    pub table: Table,
    pub address: u16,
    pub count: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusMap {
    #[serde(default = "default_poll")]
    pub poll_interval_s: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Fewer registers than this between two points still make one request.
    #[serde(default = "default_gap")]
    pub max_gap: u16,
    #[serde(rename = "point", default)]
    pub points: Vec<ModbusPoint>,
    #[serde(default)]
    pub alarm_bits: Option<BitBlock>,
    /// Commands an engineer may send (each one coil).
    #[serde(rename = "command", default)]
    pub commands: Vec<CommandSpec>,
}

/// A device command: write one coil, confirmed by reading it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub name: String,
    pub coil: u16,
    /// The device acts on the rising edge: write 1, confirm, write 0 again.
    #[serde(default)]
    pub pulse: bool,
    pub en: String,
    pub ja: String,
}

fn default_poll() -> u32 {
    10
}
fn default_timeout() -> u64 {
    1500
}
fn default_retries() -> u32 {
    2
}
fn default_gap() -> u16 {
    4
}

/// One read request of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    pub table: Table,
    pub address: u16,
    pub count: u16,
}

impl ModbusMap {
    /// The reads one poll needs: contiguous (or nearly) addresses of a table
    /// coalesced, each within the protocol's size limit.
    pub fn plan(&self) -> Vec<ReadRange> {
        let mut spans: Vec<(Table, u16, u16)> = self
            .points
            .iter()
            .map(|p| (p.table, p.address, p.address + p.reg_type.width() - 1))
            .collect();
        if let Some(b) = &self.alarm_bits {
            spans.push((b.table, b.address, b.address + b.count.max(1) - 1));
        }
        spans.sort();
        let mut out: Vec<ReadRange> = Vec::new();
        for (table, start, end) in spans {
            if let Some(last) = out.last_mut() {
                let last_end = last.address + last.count - 1;
                let merged_count = end.max(last_end) - last.address + 1;
                if last.table == table
                    && start <= last_end.saturating_add(self.max_gap + 1)
                    && merged_count <= table.max_count()
                {
                    last.count = merged_count;
                    continue;
                }
            }
            out.push(ReadRange {
                table,
                address: start,
                count: end - start + 1,
            });
        }
        out
    }

    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.poll_interval_s == 0 || self.timeout_ms == 0 {
            e.push("modbus.poll_interval_s and modbus.timeout_ms must be above 0".to_string());
        }
        for p in &self.points {
            if p.table.is_bits() != (p.reg_type == RegType::Bool) {
                e.push(format!(
                    "point {:?}: type {:?} does not fit table {:?}",
                    p.point, p.reg_type, p.table
                ));
            }
        }
        if let Some(b) = &self.alarm_bits {
            if !b.table.is_bits() || b.count == 0 || b.count > 64 {
                e.push("modbus.alarm_bits must be 1..=64 coils or discrete inputs".into());
            }
        }
        e
    }
}

/// What one range read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeData {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

/// Values of one poll: `(point, value, quality)` and the alarm bit word.
pub fn decode_poll(
    map: &ModbusMap,
    data: &[(ReadRange, RangeData)],
) -> (Vec<(String, Option<f64>, Quality)>, Option<u64>) {
    let find = |table: Table, addr: u16, width: u16| -> Option<(&RangeData, usize)> {
        data.iter().find_map(|(r, d)| {
            // In u32: an address near 65535 plus a width must not wrap.
            (r.table == table && addr >= r.address && addr as u32 + width as u32 <= r.address as u32 + r.count as u32)
                .then(|| (d, (addr - r.address) as usize))
        })
    };
    let mut out = Vec::new();
    for p in &map.points {
        let Some((d, i)) = find(p.table, p.address, p.reg_type.width()) else {
            continue;
        };
        let raw: Option<f64> = match (d, p.reg_type) {
            (RangeData::Bits(b), RegType::Bool) => b.get(i).map(|x| if *x { 1.0 } else { 0.0 }),
            (RangeData::Words(w), RegType::U16) => w.get(i).and_then(|x| (*x != 0xFFFF).then_some(*x as f64)),
            (RangeData::Words(w), RegType::I16) => w.get(i).and_then(|x| (*x != 0x8000).then_some(*x as i16 as f64)),
            (RangeData::Words(w), RegType::U32) => match (w.get(i), w.get(i + 1)) {
                (Some(hi), Some(lo)) if !(*hi == 0xFFFF && *lo == 0xFFFF) => {
                    Some(((*hi as u32) << 16 | *lo as u32) as f64)
                }
                _ => None,
            },
            _ => None,
        };
        let v = raw.map(|x| x * p.scale.unwrap_or(1.0));
        let quality = match v {
            None => Quality::Bad,
            Some(x) if p.min.is_some_and(|m| x < m) || p.max.is_some_and(|m| x > m) => Quality::Bad,
            Some(_) => Quality::Good,
        };
        out.push((p.point.clone(), v, quality));
    }
    let bits = map.alarm_bits.as_ref().and_then(|b| {
        let (d, i) = find(b.table, b.address, b.count)?;
        match d {
            // A gateway may answer fewer bits than asked (found by fuzzing):
            // then there is no alarm word this poll, not a panic.
            RangeData::Bits(bits) => bits.get(i..i + b.count as usize).map(|bits| {
                bits.iter()
                    .take(64)
                    .enumerate()
                    .fold(0u64, |acc, (n, on)| acc | ((*on as u64) << n))
            }),
            RangeData::Words(_) => None,
        }
    });
    (out, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_answer_is_no_alarm_word_not_a_panic() {
        // The crash cargo-fuzz found: the alarm coils answered with fewer bits
        // than the map reads.
        let cfg = crate::config::Config::load_embedded().unwrap();
        let map = cfg.profiles.values().find_map(|p| p.modbus.clone()).unwrap();
        let short: Vec<_> = map
            .plan()
            .into_iter()
            .map(|r| {
                let d = if r.table.is_bits() {
                    RangeData::Bits(vec![true; 1])
                } else {
                    RangeData::Words(vec![1; 1])
                };
                (r, d)
            })
            .collect();
        let (_, bits) = decode_poll(&map, &short);
        assert_eq!(bits, None);
    }

    fn map() -> ModbusMap {
        toml::from_str(
            r#"
[[point]]
point = "level"
table = "input"
address = 0
type = "u16"
[[point]]
point = "p1_current"
table = "input"
address = 1
type = "u16"
scale = 0.1
[[point]]
point = "p1_run_min"
table = "input"
address = 3
type = "u32"
[[point]]
point = "panel_temp"
table = "input"
address = 17
type = "i16"
scale = 0.1
[[point]]
point = "p1_run"
table = "discrete"
address = 32
type = "bool"
[alarm_bits]
table = "discrete"
address = 0
count = 19
"#,
        )
        .unwrap()
    }

    #[test]
    fn plan_coalesces_and_splits() {
        let m = map();
        assert_eq!(
            m.plan(),
            vec![
                ReadRange {
                    table: Table::Discrete,
                    address: 0,
                    count: 19
                },
                ReadRange {
                    table: Table::Discrete,
                    address: 32,
                    count: 1
                },
                ReadRange {
                    table: Table::Input,
                    address: 0,
                    count: 5
                },
                ReadRange {
                    table: Table::Input,
                    address: 17,
                    count: 1
                },
            ]
        );
        assert!(m.validate().is_empty());
    }

    #[test]
    fn decode_types_scale_and_not_available() {
        let m = map();
        let mut regs = vec![0u16; 5];
        regs[0] = 48;
        regs[1] = 64; // 6.4 A
        regs[3] = 0x0002;
        regs[4] = 0xD0F9; // 184_569 min
        let mut bits = vec![false; 19];
        bits[0] = true;
        bits[10] = true;
        let data = vec![
            (
                ReadRange {
                    table: Table::Input,
                    address: 0,
                    count: 5,
                },
                RangeData::Words(regs.clone()),
            ),
            (
                ReadRange {
                    table: Table::Input,
                    address: 17,
                    count: 1,
                },
                RangeData::Words(vec![0xFFEC]),
            ), // -2.0 °C
            (
                ReadRange {
                    table: Table::Discrete,
                    address: 0,
                    count: 19,
                },
                RangeData::Bits(bits),
            ),
            (
                ReadRange {
                    table: Table::Discrete,
                    address: 32,
                    count: 1,
                },
                RangeData::Bits(vec![true]),
            ),
        ];
        let (vals, word) = decode_poll(&m, &data);
        let get = |n: &str| vals.iter().find(|v| v.0 == n).unwrap().clone();
        assert_eq!(get("level"), ("level".into(), Some(48.0), Quality::Good));
        assert!((get("p1_current").1.unwrap() - 6.4).abs() < 1e-9);
        assert_eq!(get("p1_run_min").1, Some(184_569.0));
        assert!((get("panel_temp").1.unwrap() + 2.0).abs() < 1e-9);
        assert_eq!(get("p1_run").1, Some(1.0));
        assert_eq!(word, Some(1 | 1 << 10));
        // Not available: 0xFFFF unsigned, 0x8000 signed -> bad, no value.
        regs[0] = 0xFFFF;
        let data = vec![
            (
                ReadRange {
                    table: Table::Input,
                    address: 0,
                    count: 5,
                },
                RangeData::Words(regs),
            ),
            (
                ReadRange {
                    table: Table::Input,
                    address: 17,
                    count: 1,
                },
                RangeData::Words(vec![0x8000]),
            ),
        ];
        let (vals, word) = decode_poll(&m, &data);
        assert_eq!(vals.iter().find(|v| v.0 == "level").unwrap().2, Quality::Bad);
        assert_eq!(vals.iter().find(|v| v.0 == "panel_temp").unwrap().1, None);
        assert_eq!(word, None);
    }
}

/// One block of a poll as read: its start address and the raw values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PollBlock<T> {
    pub start: u16,
    pub values: Vec<T>,
}

/// A bit as a capture holds it: `0`/`1` (written), or `true`/`false` (read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bit(pub bool);

impl serde::Serialize for Bit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0 as u8)
    }
}

impl<'de> serde::Deserialize<'de> for Bit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum B {
            Bool(bool),
            Num(u8),
        }
        match B::deserialize(d)? {
            B::Bool(b) => Ok(Bit(b)),
            B::Num(0) => Ok(Bit(false)),
            B::Num(1) => Ok(Bit(true)),
            B::Num(n) => Err(serde::de::Error::custom(format!("a bit is 0 or 1, not {n}"))),
        }
    }
}

/// Everything one poll of a unit read, per table, as `interfaces.md`
/// ("Captures and replay") records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    #[serde(default)]
    pub coils: Vec<PollBlock<Bit>>,
    #[serde(default)]
    pub discrete: Vec<PollBlock<Bit>>,
    #[serde(default)]
    pub input: Vec<PollBlock<u16>>,
    #[serde(default)]
    pub holding: Vec<PollBlock<u16>>,
}

impl Poll {
    pub fn from_ranges(data: &[(ReadRange, RangeData)]) -> Self {
        let mut p = Poll::default();
        for (r, d) in data {
            match (r.table, d) {
                (Table::Coil, RangeData::Bits(b)) => p.coils.push(PollBlock {
                    start: r.address,
                    values: b.iter().map(|v| Bit(*v)).collect(),
                }),
                (Table::Discrete, RangeData::Bits(b)) => p.discrete.push(PollBlock {
                    start: r.address,
                    values: b.iter().map(|v| Bit(*v)).collect(),
                }),
                (Table::Input, RangeData::Words(w)) => p.input.push(PollBlock {
                    start: r.address,
                    values: w.clone(),
                }),
                (Table::Holding, RangeData::Words(w)) => p.holding.push(PollBlock {
                    start: r.address,
                    values: w.clone(),
                }),
                // A read answers in its table's kind; nothing else is produced.
                _ => {}
            }
        }
        p
    }

    /// Back to the blocks `decode_poll` reads. A block longer than the
    /// protocol allows is cut (a hand-written capture cannot make a read
    /// that no device could answer).
    pub fn ranges(&self) -> Vec<(ReadRange, RangeData)> {
        fn blocks<T>(
            table: Table,
            blocks: &[PollBlock<T>],
            data: impl Fn(&[T]) -> RangeData,
        ) -> Vec<(ReadRange, RangeData)> {
            blocks
                .iter()
                .map(|b| {
                    let range = ReadRange {
                        table,
                        address: b.start,
                        count: b.values.len().min(u16::MAX as usize) as u16,
                    };
                    (range, data(&b.values))
                })
                .collect()
        }
        let bits = |v: &[Bit]| RangeData::Bits(v.iter().map(|b| b.0).collect());
        let words = |v: &[u16]| RangeData::Words(v.to_vec());
        let mut out = blocks(Table::Coil, &self.coils, bits);
        out.extend(blocks(Table::Discrete, &self.discrete, bits));
        out.extend(blocks(Table::Input, &self.input, words));
        out.extend(blocks(Table::Holding, &self.holding, words));
        out
    }
}

/// The decoded message one poll of a station makes, stamped with the
/// master station's time of the poll (controllers carry no clock of their
/// own in the register map).
pub fn poll_decoded(
    site: &crate::config::Site,
    map: &ModbusMap,
    data: &[(ReadRange, RangeData)],
    now: Timestamp,
) -> super::Decoded {
    let (values, bits) = decode_poll(map, data);
    super::Decoded {
        message: "poll".into(),
        kind: super::MessageKind::Record,
        site: site.id.to_string(),
        device: Some(site.device.to_string()),
        // Polls have no (boot, seq): each is read fresh, nothing to deduplicate.
        ident: None,
        t: Some(now),
        readings: values
            .into_iter()
            .map(|(point, value, quality)| super::RawReading {
                point,
                t: now,
                value,
                quality,
            })
            .collect(),
        events: vec![],
        bits: bits.map(|b| (now, b)),
        online: Some(true),
        // Read now by mizuban itself: sent and received at once.
        sent_at: Some(now),
        // Comm loss follows the profile's `comm.expected_interval_s`, which
        // states the poll cadence the station is engineered for.
        interval_s: None,
        backlog: None,
        problems: vec![],
    }
}

/// The topic a poll is shown under (latest raw message, quarantine).
pub fn poll_topic(site: &crate::config::Site) -> String {
    format!("modbus://{}/{}", site.id, site.device)
}
