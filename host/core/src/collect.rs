//! Collecting a batch's worth of fallible results into a vector allocated once.
//!
//! `iter.collect::<Result<Vec<_>, _>>()` cannot see how many items are coming (the error may
//! stop it early), so it grows the vector by doubling and copies every item several times on
//! the way to a thousand. The hot per-batch conversions (encoding records, lifting a
//! transform's edits and a namer's topics) know their length exactly, so they use this.

/// The items of `iter` in order, or its first error.
pub fn try_collect_exact<T, E>(
    iter: impl ExactSizeIterator<Item = Result<T, E>>,
) -> Result<Vec<T>, E> {
    let mut out = Vec::with_capacity(iter.len());
    for item in iter {
        out.push(item?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_all_or_stops_at_the_first_error() {
        let ok: Result<Vec<u8>, &str> = try_collect_exact([Ok(1), Ok(2)].into_iter());
        assert_eq!(ok, Ok(vec![1, 2]));
        let failed = try_collect_exact([Ok(1), Err("no"), Err("later")].into_iter());
        assert_eq!(failed, Err("no"));
    }
}
