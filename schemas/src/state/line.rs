//! The two records behind a pending request's place in line: where ingest
//! put the request on the requests topic ([`Position`]), and how far the
//! processors are on each partition of it ([`Progress`]). Fields are joined
//! by `|`, like the campaign records.

use super::RecordError;

/// Where a request sits on the requests topic and whose it is, under
/// [`super::KeyLayout::position`]: `partition|offset|user_id`. The user is
/// kept because a pending request has no stored owner yet, and its place
/// is shown only to whoever may see the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
    pub user_id: String,
}

impl Position {
    const KIND: &'static str = "position";

    /// The stored form.
    pub fn encode(&self) -> String {
        format!("{}|{}|{}", self.partition, self.offset, self.user_id)
    }

    /// Reads the stored form. The user id is the rest of the record (user
    /// ids never hold `|`, but nothing breaks if one did).
    pub fn parse(raw: &str) -> Result<Self, RecordError> {
        let err = |why: String| RecordError {
            kind: Self::KIND,
            raw: raw.to_owned(),
            why,
        };
        let f: Vec<&str> = raw.splitn(3, '|').collect();
        let [partition, offset, user_id] = f[..] else {
            return Err(err(format!("{} fields, expected 3", f.len())));
        };
        let partition: i32 = partition
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| err(format!("partition {partition:?} is not a partition number")))?;
        let offset: i64 = offset
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| err(format!("offset {offset:?} is not an offset")))?;
        if user_id.is_empty() {
            return Err(err("no user id".into()));
        }
        Ok(Self {
            partition,
            offset,
            user_id: user_id.to_owned(),
        })
    }
}

/// How far the processors are on one partition of the requests topic, the
/// value of its field (the partition number) in
/// [`super::KeyLayout::progress`]: `decided_offset|rate_per_sec|updated_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The highest offset of the partition whose message the processors
    /// have gone through (decided, dead-lettered or forwarded) and whose
    /// decision is recorded: every message at or before it is done.
    pub decided_offset: i64,
    /// Messages of the partition decided per second, averaged over the
    /// last few seconds of work (`None`: not known yet; stored as 0).
    pub rate_per_sec: Option<f64>,
    /// When the processor wrote this (its clock, unix ms).
    pub updated_ms: i64,
}

impl Progress {
    const KIND: &'static str = "progress";

    /// The stored form (an unknown rate is stored as 0).
    pub fn encode(&self) -> String {
        let rate = self
            .rate_per_sec
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(0.0);
        format!("{}|{rate:.3}|{}", self.decided_offset, self.updated_ms)
    }

    /// Reads the stored form; a rate that is 0, negative or not a finite
    /// number reads as unknown.
    pub fn parse(raw: &str) -> Result<Self, RecordError> {
        let err = |why: String| RecordError {
            kind: Self::KIND,
            raw: raw.to_owned(),
            why,
        };
        let f: Vec<&str> = raw.split('|').collect();
        let [offset, rate, updated] = f[..] else {
            return Err(err(format!("{} fields, expected 3", f.len())));
        };
        let decided_offset: i64 = offset
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| err(format!("offset {offset:?} is not an offset")))?;
        let rate: f64 = rate
            .parse()
            .map_err(|_| err(format!("rate {rate:?} is not a number")))?;
        let updated_ms: i64 = updated
            .parse()
            .map_err(|_| err(format!("time {updated:?} is not a number")))?;
        Ok(Self {
            decided_offset,
            rate_per_sec: (rate.is_finite() && rate > 0.0).then_some(rate),
            updated_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_and_bad_ones_are_errors() {
        let p = Position {
            partition: 3,
            offset: 41,
            user_id: "alice".into(),
        };
        assert_eq!(p.encode(), "3|41|alice");
        assert_eq!(Position::parse(&p.encode()), Ok(p));
        // The user is the rest of the record.
        assert_eq!(
            Position::parse("0|7|a|b").map(|p| p.user_id),
            Ok("a|b".to_owned())
        );
        for bad in [
            "", "3", "3|41", "3|41|", "x|41|u", "3|x|u", "-1|4|u", "3|-4|u", "3.5|4|u",
        ] {
            let e = Position::parse(bad).expect_err(bad);
            assert_eq!(e.kind, "position");
        }
    }

    #[test]
    fn progress_reads_back_and_an_unusable_rate_is_unknown() {
        let p = Progress {
            decided_offset: 120,
            rate_per_sec: Some(2500.25),
            updated_ms: 1_700_000_000_123,
        };
        assert_eq!(p.encode(), "120|2500.250|1700000000123");
        assert_eq!(Progress::parse(&p.encode()), Ok(p));
        let unknown = Progress {
            decided_offset: 0,
            rate_per_sec: None,
            updated_ms: 5,
        };
        assert_eq!(unknown.encode(), "0|0.000|5");
        assert_eq!(Progress::parse(&unknown.encode()), Ok(unknown.clone()));
        for odd in ["0|-3|5", "0|NaN|5", "0|inf|5"] {
            assert_eq!(Progress::parse(odd), Ok(unknown.clone()), "{odd}");
        }
        // A rate that cannot be written is written as unknown.
        let nan = Progress {
            rate_per_sec: Some(f64::NAN),
            ..unknown.clone()
        };
        assert_eq!(nan.encode(), "0|0.000|5");
        for bad in [
            "", "1|2", "1|2|3|4", "x|1|2", "-1|1|2", "1|fast|2", "1|1|soon",
        ] {
            let e = Progress::parse(bad).expect_err(bad);
            assert_eq!(e.kind, "progress");
        }
    }
}
