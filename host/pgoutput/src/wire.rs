//! Builds pgoutput message bytes field by field, as the server writes them, for tests of the
//! decoder here and of the assembler and replication code that consume it.

/// Builds message bytes field by field, as the server writes them (network byte order).
#[derive(Debug, Clone, Default)]
pub struct Wire(pub Vec<u8>);

/// One column of a hand-built TupleData.
#[derive(Debug, Clone, Copy)]
pub enum Col<'a> {
    /// `n`
    Null,
    /// `u`
    Toast,
    /// `t`
    Text(&'a str),
    /// `b`
    Bin(&'a [u8]),
}

impl Wire {
    pub fn tag(tag: u8) -> Wire {
        Wire(vec![tag])
    }
    pub fn u8(mut self, v: u8) -> Wire {
        self.0.push(v);
        self
    }
    pub fn i16(mut self, v: i16) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Wire {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn str(mut self, s: &str) -> Wire {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Wire {
        self.0.extend_from_slice(b);
        self
    }
    pub fn tuple(mut self, cols: &[Col<'_>]) -> Wire {
        self = self.i16(cols.len() as i16);
        for col in cols {
            self = match col {
                Col::Null => self.u8(b'n'),
                Col::Toast => self.u8(b'u'),
                Col::Text(s) => self.u8(b't').i32(s.len() as i32).raw(s.as_bytes()),
                Col::Bin(b) => self.u8(b'b').i32(b.len() as i32).raw(b),
            };
        }
        self
    }
    /// The (sub)transaction xid that messages inside a streamed block carry.
    pub fn xid(self, xid: Option<u32>) -> Wire {
        match xid {
            Some(x) => self.u32(x),
            None => self,
        }
    }
}
