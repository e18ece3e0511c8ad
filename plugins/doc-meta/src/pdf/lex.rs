//! PDF objects from bytes: a bounded recursive-descent parser.
//!
//! Works on a window of the file (`buf`, starting at file offset `base`).
//! Running off the end of a window that does not reach the end of the file
//! is [`PErr::Incomplete`] (the caller fetches a larger window and tries
//! again); everything else wrong is [`PErr::Bad`] with the byte offset.
//! Containers nest at most [`MAX_DEPTH`] levels, hold at most
//! [`MAX_ITEMS`] entries; strings and names are bounded by the window.

/// How deep dictionaries and arrays may nest.
pub const MAX_DEPTH: usize = 32;
/// Entries of one array or dictionary.
pub const MAX_ITEMS: usize = 100_000;

pub type Dict = Vec<(Vec<u8>, Obj)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(Vec<u8>),
    Name(Vec<u8>),
    Array(Vec<Obj>),
    Dict(Dict),
    Ref(u32, u16),
    /// A stream: its dictionary and the file offset (or, inside an object
    /// stream, never) where its data start.
    Stream(Dict, u64),
}

impl Obj {
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Obj::Dict(d) | Obj::Stream(d, _) => Some(d),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_name(&self) -> Option<&[u8]> {
        match self {
            Obj::Name(n) => Some(n),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Obj::Null => "null",
            Obj::Bool(_) => "a boolean",
            Obj::Int(_) => "an integer",
            Obj::Real(_) => "a real number",
            Obj::Str(_) => "a string",
            Obj::Name(_) => "a name",
            Obj::Array(_) => "an array",
            Obj::Dict(_) => "a dictionary",
            Obj::Ref(..) => "a reference",
            Obj::Stream(..) => "a stream",
        }
    }
}

pub fn get<'a>(dict: &'a Dict, key: &[u8]) -> Option<&'a Obj> {
    dict.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[derive(Debug)]
pub enum PErr {
    /// The window ended before the object did.
    Incomplete,
    /// Not a PDF object: what and where.
    Bad(String),
}

pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\0')
}

pub fn is_delim(b: u8) -> bool {
    matches!(b, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

fn is_regular(b: u8) -> bool {
    !is_ws(b) && !is_delim(b)
}

pub struct Lexer<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    /// File offset of `buf[0]` (for messages).
    pub base: u64,
    /// Whether `buf` reaches the end of its input (running out is then Bad).
    pub complete: bool,
    /// Where messages say the bytes are (`byte` or `byte … of object stream N`).
    pub place: &'a str,
}

impl<'a> Lexer<'a> {
    pub fn new(buf: &'a [u8], base: u64, complete: bool) -> Self {
        Lexer { buf, pos: 0, base, complete, place: "" }
    }

    pub fn at(&self) -> String {
        format!("byte {}{}", self.base + self.pos as u64, self.place)
    }

    fn eof(&self, what: &str) -> PErr {
        if self.complete {
            PErr::Bad(format!("{what} runs past the end of the data at {}", self.at()))
        } else {
            PErr::Incomplete
        }
    }

    pub fn skip_ws(&mut self) {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            if is_ws(b) {
                self.pos += 1;
            } else if b == b'%' {
                while self.pos < self.buf.len() && !matches!(self.buf[self.pos], b'\r' | b'\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// A run of regular characters (a keyword or number), without consuming
    /// whitespace before it. Incomplete if it touches the window's end.
    pub fn word(&mut self) -> Result<&'a [u8], PErr> {
        let start = self.pos;
        while self.pos < self.buf.len() && is_regular(self.buf[self.pos]) {
            self.pos += 1;
        }
        if self.pos == self.buf.len() && !self.complete {
            return Err(PErr::Incomplete);
        }
        Ok(&self.buf[start..self.pos])
    }

    /// Consumes `kw` (after whitespace) if it is the next word.
    pub fn keyword(&mut self, kw: &[u8]) -> Result<bool, PErr> {
        self.skip_ws();
        let save = self.pos;
        let w = self.word()?;
        if w == kw {
            Ok(true)
        } else {
            self.pos = save;
            Ok(false)
        }
    }

    /// An unsigned integer (after whitespace).
    pub fn uint(&mut self) -> Result<Option<u64>, PErr> {
        self.skip_ws();
        let save = self.pos;
        let w = self.word()?;
        match parse_uint(w) {
            Some(n) => Ok(Some(n)),
            None => {
                self.pos = save;
                Ok(None)
            }
        }
    }

    /// One object; `depth` is how many containers enclose it.
    pub fn object(&mut self, depth: usize) -> Result<Obj, PErr> {
        self.skip_ws();
        let Some(b) = self.peek() else {
            return Err(self.eof("an object"));
        };
        match b {
            b'/' => {
                self.pos += 1;
                Ok(Obj::Name(self.name()?))
            }
            b'(' => {
                self.pos += 1;
                Ok(Obj::Str(self.literal()?))
            }
            b'<' => {
                if self.buf.get(self.pos + 1) == Some(&b'<') {
                    self.enter(depth, "dictionaries")?;
                    self.pos += 2;
                    Ok(Obj::Dict(self.dict_body(depth)?))
                } else if self.pos + 1 >= self.buf.len() {
                    Err(self.eof("a string or dictionary"))
                } else {
                    self.pos += 1;
                    Ok(Obj::Str(self.hex()?))
                }
            }
            b'[' => {
                self.enter(depth, "arrays")?;
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.peek() {
                        None => return Err(self.eof("an array")),
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Obj::Array(items));
                        }
                        Some(_) => {
                            if items.len() >= MAX_ITEMS {
                                return Err(PErr::Bad(format!(
                                    "an array holds more than {MAX_ITEMS} items at {}",
                                    self.at()
                                )));
                            }
                            items.push(self.object(depth + 1)?);
                        }
                    }
                }
            }
            b'+' | b'-' | b'.' | b'0'..=b'9' => self.number(),
            _ if is_regular(b) => {
                let at = self.at();
                let w = self.word()?;
                match w {
                    b"true" => Ok(Obj::Bool(true)),
                    b"false" => Ok(Obj::Bool(false)),
                    b"null" => Ok(Obj::Null),
                    _ => Err(PErr::Bad(format!("unexpected keyword of {} bytes at {at}", w.len()))),
                }
            }
            _ => Err(PErr::Bad(format!("unexpected byte 0x{b:02x} at {}", self.at()))),
        }
    }

    fn enter(&self, depth: usize, what: &str) -> Result<(), PErr> {
        if depth >= MAX_DEPTH {
            Err(PErr::Bad(format!("{what} nest deeper than {MAX_DEPTH} levels at {}", self.at())))
        } else {
            Ok(())
        }
    }

    /// After `<<`: entries up to and including `>>`.
    pub fn dict_body(&mut self, depth: usize) -> Result<Dict, PErr> {
        let mut dict = Dict::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Err(self.eof("a dictionary")),
                Some(b'>') => {
                    if self.pos + 1 >= self.buf.len() {
                        return Err(self.eof("a dictionary"));
                    }
                    if self.buf[self.pos + 1] != b'>' {
                        return Err(PErr::Bad(format!("a single '>' in a dictionary at {}", self.at())));
                    }
                    self.pos += 2;
                    return Ok(dict);
                }
                Some(b'/') => {
                    self.pos += 1;
                    let key = self.name()?;
                    let value = self.object(depth + 1)?;
                    if dict.len() >= MAX_ITEMS {
                        return Err(PErr::Bad(format!(
                            "a dictionary holds more than {MAX_ITEMS} entries at {}",
                            self.at()
                        )));
                    }
                    // the first of duplicate keys wins
                    if get(&dict, &key).is_none() {
                        dict.push((key, value));
                    }
                }
                Some(_) => return Err(PErr::Bad(format!("a dictionary key is not a name at {}", self.at()))),
            }
        }
    }

    /// After `/`: the name, `#xx` escapes decoded.
    fn name(&mut self) -> Result<Vec<u8>, PErr> {
        let raw = self.word()?;
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'#' && i + 2 < raw.len() {
                if let (Some(h), Some(l)) = (hex_val(raw[i + 1]), hex_val(raw[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(raw[i]);
            i += 1;
        }
        Ok(out)
    }

    /// After `(`: the string's bytes, escapes decoded, up to its `)`.
    fn literal(&mut self) -> Result<Vec<u8>, PErr> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.eof("a string"));
            };
            self.pos += 1;
            match b {
                b'(' => {
                    depth += 1;
                    out.push(b);
                }
                b')' => {
                    if depth == 0 {
                        return Ok(out);
                    }
                    depth -= 1;
                    out.push(b);
                }
                b'\r' => {
                    // an end of line in a string is a line feed
                    if self.peek() == Some(b'\n') {
                        self.pos += 1;
                    } else if self.peek().is_none() && !self.complete {
                        return Err(PErr::Incomplete);
                    }
                    out.push(b'\n');
                }
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.eof("a string"));
                    };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'0'..=b'7' => {
                            let mut v = (e - b'0') as u32;
                            for _ in 0..2 {
                                match self.peek() {
                                    Some(d @ b'0'..=b'7') => {
                                        v = v * 8 + (d - b'0') as u32;
                                        self.pos += 1;
                                    }
                                    None if !self.complete => return Err(PErr::Incomplete),
                                    _ => break,
                                }
                            }
                            out.push((v & 0xff) as u8);
                        }
                        b'\r' => {
                            // line continuation
                            if self.peek() == Some(b'\n') {
                                self.pos += 1;
                            }
                        }
                        b'\n' => {}
                        // \( \) \\ and unknown escapes: the character itself
                        other => out.push(other),
                    }
                }
                _ => out.push(b),
            }
        }
    }

    /// After `<`: a hex string up to `>` (whitespace ignored, an odd last
    /// digit padded with 0).
    fn hex(&mut self) -> Result<Vec<u8>, PErr> {
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.eof("a hex string"));
            };
            self.pos += 1;
            if b == b'>' {
                if let Some(h) = high {
                    out.push(h << 4);
                }
                return Ok(out);
            }
            if is_ws(b) {
                continue;
            }
            let Some(v) = hex_val(b) else {
                return Err(PErr::Bad(format!("a hex string holds byte 0x{b:02x} at {}", self.at())));
            };
            match high.take() {
                Some(h) => out.push(h << 4 | v),
                None => high = Some(v),
            }
        }
    }

    /// A number, or `N G R`.
    fn number(&mut self) -> Result<Obj, PErr> {
        let at = self.at();
        let w = self.word()?;
        if let Some(n) = parse_uint(w) {
            // maybe a reference: N G R
            let save = self.pos;
            if n <= u32::MAX as u64 {
                self.skip_ws();
                if self.pos == self.buf.len() && !self.complete {
                    return Err(PErr::Incomplete);
                }
                let g = self.word()?;
                if let Some(g) = parse_uint(g).filter(|&g| g <= u16::MAX as u64) {
                    self.skip_ws();
                    if self.pos == self.buf.len() && !self.complete {
                        return Err(PErr::Incomplete);
                    }
                    let r_start = self.pos;
                    if self.word()? == b"R" {
                        return Ok(Obj::Ref(n as u32, g as u16));
                    }
                    self.pos = r_start;
                }
            }
            self.pos = save;
            return Ok(if n <= i64::MAX as u64 { Obj::Int(n as i64) } else { Obj::Real(n as f64) });
        }
        let s = std::str::from_utf8(w).unwrap_or("");
        if let Ok(i) = s.parse::<i64>() {
            return Ok(Obj::Int(i));
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Obj::Real(f)),
            // `--5`, `1.2.3`: producers write such things; read them as 0
            _ if w.len() <= 32 => Ok(Obj::Real(0.0)),
            _ => Err(PErr::Bad(format!("a number of {} characters at {at}", w.len()))),
        }
    }
}

pub fn parse_uint(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 19 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    w.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add((d - b'0') as u64))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `N G obj`: the header of an indirect object, then the object, then (for
/// a dictionary followed by `stream`) where the stream data start, as an
/// index into the lexer's buffer.
pub fn indirect(lx: &mut Lexer) -> Result<(u32, u16, Obj, Option<usize>), PErr> {
    let at = lx.at();
    let bad = || PErr::Bad(format!("no `N G obj` object header at {at}"));
    let num = lx.uint()?.ok_or_else(bad)?;
    let gen = lx.uint()?.ok_or_else(bad)?;
    if !lx.keyword(b"obj")? || num > u32::MAX as u64 || gen > u16::MAX as u64 {
        return Err(bad());
    }
    let obj = lx.object(0)?;
    let mut data = None;
    if matches!(obj, Obj::Dict(_)) {
        lx.skip_ws_no_comment();
        if lx.keyword(b"stream")? {
            // the keyword is followed by CRLF or LF (a lone CR tolerated)
            match lx.peek() {
                Some(b'\r') => {
                    lx.pos += 1;
                    if lx.peek() == Some(b'\n') {
                        lx.pos += 1;
                    }
                }
                Some(b'\n') => lx.pos += 1,
                None if !lx.complete => return Err(PErr::Incomplete),
                _ => {}
            }
            data = Some(lx.pos);
        }
    }
    Ok((num as u32, gen as u16, obj, data))
}

impl Lexer<'_> {
    fn skip_ws_no_comment(&mut self) {
        while self.pos < self.buf.len() && is_ws(self.buf[self.pos]) {
            self.pos += 1;
        }
    }
}
