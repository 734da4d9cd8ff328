//! MySQL/MariaDB sample rows as one bound JSON parameter per statement.
//!
//! A multi-row `INSERT … VALUES (?, …), …` of 2,500 rows × 11 columns makes the server set up,
//! convert and reset 27,500 bound parameters per statement, and that per-parameter work is where
//! it spends its time. Here a statement binds two values: the run and a JSON array of the rows'
//! numbers, which the server unpacks with `JSON_TABLE` in one pass. The values are still bound
//! (no data in SQL text), and each JSON number is the same signed 64-bit value the per-row path
//! binds, converted to the column type by the same `INSERT IGNORE` assignment.
use latplan_common::wire::Sample;

use super::model::FlowKey;

/// Columns of `samples` after `run_id`, in the order each row's JSON array holds them.
const JSON_COLUMNS: [&str; 10] = [
    "record_seq",
    "ts_ns",
    "flow_id",
    "byte_offset",
    "len",
    "layer",
    "ifindex",
    "netns",
    "cpu",
    "flags",
];

/// Longest encoding of one row: ten signed 64-bit numbers of up to 20 characters, their
/// separators and brackets.
pub(crate) const MAX_ROW_BYTES: usize = JSON_COLUMNS.len() * 21 + 2;

/// The statement: binds the run, then the JSON array of rows. Every column must be present in
/// every row (`ERROR ON EMPTY`), so a malformed array fails the statement instead of storing
/// NULL-turned-zero values.
pub(crate) fn insert_sql(insert_ignore: &str) -> String {
    let cols = JSON_COLUMNS.join(", ");
    let select = JSON_COLUMNS
        .iter()
        .map(|c| format!("j.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let table = JSON_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} BIGINT PATH '$[{i}]' ERROR ON EMPTY ERROR ON ERROR"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{insert_ignore} INTO samples (run_id, {cols}) SELECT ?, {select} \
         FROM JSON_TABLE(?, '$[*]' COLUMNS({table})) AS j"
    )
}

/// Encodes rows as `[[seq,ts,flow,offset,len,layer,ifindex,netns,cpu,flags],…]` into `out`
/// (cleared first). Each value is cast exactly as the per-row path binds it (`as i64`), so
/// u64 values above `i64::MAX` are stored as the same negative numbers.
pub(crate) fn encode_rows<'a, I>(rows: I, out: &mut String)
where
    I: IntoIterator<Item = (u64, &'a Sample)>,
{
    let mut num = itoa::Buffer::new();
    out.clear();
    out.push('[');
    for (n, (seq, s)) in rows.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let values: [i64; 10] = [
            seq as i64,
            s.ts_ns as i64,
            FlowKey::of(s).id(),
            s.offset as i64,
            s.len as i64,
            s.layer as u8 as i64,
            s.ifindex as i64,
            s.netns as i64,
            s.cpu as i64,
            s.flags as i64,
        ];
        out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(num.format(*v));
        }
        out.push(']');
    }
    out.push(']');
}

/// Rows per statement for a server whose `max_allowed_packet` is `packet` bytes: at most
/// `wanted`, and small enough that even rows of maximal width fill at most half a packet.
pub(crate) fn rows_per_statement(packet: u64, wanted: usize) -> usize {
    let fit = (packet / 2) as usize / MAX_ROW_BYTES;
    wanted.min(fit).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sample;

    #[test]
    fn rows_encode_as_signed_numbers_in_column_order() {
        let mut s = sample(0, 1);
        s.ts_ns = u64::MAX;
        s.offset = i64::MAX as u64 + 1;
        s.len = u32::MAX;
        s.netns = u32::MAX;
        s.cpu = u16::MAX;
        s.flags = u8::MAX;
        let mut out = String::new();
        encode_rows([(0, &s), (u64::MAX - 1, &sample(1, 2))], &mut out);
        let parsed: Vec<Vec<i64>> = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[0],
            vec![
                0,
                -1,
                FlowKey::of(&s).id(),
                i64::MIN,
                u32::MAX as i64,
                s.layer as u8 as i64,
                3,
                u32::MAX as i64,
                65535,
                255
            ]
        );
        assert_eq!(parsed[1][0], -2);
        assert!(out.len() <= 2 * MAX_ROW_BYTES + 3);
    }

    #[test]
    fn empty_input_is_an_empty_array() {
        let mut out = String::from("stale");
        encode_rows(std::iter::empty(), &mut out);
        assert_eq!(out, "[]");
    }

    #[test]
    fn statements_stay_within_half_the_packet_limit() {
        assert_eq!(rows_per_statement(16 << 20, 10_000), 10_000);
        let n = rows_per_statement(1 << 20, 10_000);
        assert!(n * MAX_ROW_BYTES <= 1 << 19 && n > 1000, "{n}");
        assert_eq!(rows_per_statement(1024, 10_000), 2);
        assert_eq!(rows_per_statement(0, 10_000), 1);
    }

    #[test]
    fn the_statement_binds_run_and_json_only() {
        let sql = insert_sql("INSERT IGNORE");
        assert_eq!(sql.matches('?').count(), 2);
        assert!(sql.contains("flags BIGINT PATH '$[9]'"));
    }
}
