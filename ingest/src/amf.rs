//! A bounded pre-check of AMF0 command and data messages, before the RTMP
//! library parses them.
//!
//! The library's AMF0 decoder recurses into nested objects and arrays with no
//! limit (a few kilobytes of nested arrays overflow the stack and abort the
//! whole process) and panics on a command with fewer than three values. This
//! walks the same grammar iteratively, with an explicit stack, and refuses
//! what is too deep, has too many values, is truncated, or is not a command.

/// Limits of [`check`].
#[derive(Debug, Clone, Copy)]
pub struct AmfLimits {
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// Most values in one message (all levels).
    pub max_values: usize,
}

impl Default for AmfLimits {
    fn default() -> Self {
        Self { max_depth: 16, max_values: 4096 }
    }
}

enum Ctx {
    /// Inside an object or ECMA array: expects a property (or the end).
    Object,
    /// Inside a strict array: this many values still to come.
    Array(u32),
}

/// Checks the AMF0 values of a message; `command` requires what an AMF0
/// command is (a name string, a transaction number, a command object).
/// Returns the number of top-level values.
pub fn check(data: &[u8], limits: AmfLimits, command: bool) -> Result<usize, String> {
    let mut pos = 0usize;
    let mut stack: Vec<Ctx> = Vec::new();
    let (mut top, mut values) = (0usize, 0usize);
    let take = |pos: &mut usize, n: usize| -> Result<usize, String> {
        let at = *pos;
        if data.len() - at < n {
            return Err(format!("truncated at byte {at}"));
        }
        *pos += n;
        Ok(at)
    };
    let be16 = |at: usize| usize::from(u16::from_be_bytes([data[at], data[at + 1]]));
    loop {
        // The marker of the next value, if one comes here.
        let marker = match stack.last_mut() {
            None => {
                // Top level: values until the end (or an object-end marker, where the library stops).
                if pos == data.len() || data[pos] == 0x09 {
                    break;
                }
                if command && top == 0 && data[pos] != 0x02 {
                    return Err("a command's first value is not its name".into());
                }
                if command && top == 1 && data[pos] != 0x00 {
                    return Err("a command's second value is not a transaction number".into());
                }
                top += 1;
                data[take(&mut pos, 1)?]
            }
            Some(Ctx::Object) => {
                let at = take(&mut pos, 2)?;
                let label = be16(at);
                if label == 0 {
                    if data[take(&mut pos, 1)?] != 0x09 {
                        return Err("empty property name without the object end".into());
                    }
                    stack.pop();
                    continue;
                }
                take(&mut pos, label)?;
                let m = data[take(&mut pos, 1)?];
                if m == 0x09 {
                    return Err("a property without a value".into());
                }
                m
            }
            Some(Ctx::Array(left)) => {
                if *left == 0 || pos == data.len() || data[pos] == 0x09 {
                    if *left > 0 && pos < data.len() {
                        pos += 1;
                    }
                    stack.pop();
                    continue;
                }
                *left -= 1;
                data[take(&mut pos, 1)?]
            }
        };
        values += 1;
        if values > limits.max_values {
            return Err(format!("more than {} values", limits.max_values));
        }
        match marker {
            0x00 => drop(take(&mut pos, 8)?),
            0x01 => drop(take(&mut pos, 1)?),
            0x02 => {
                let at = take(&mut pos, 2)?;
                take(&mut pos, be16(at))?;
            }
            0x05 | 0x06 => {}
            0x03 | 0x08 | 0x0a => {
                if stack.len() >= limits.max_depth {
                    return Err(format!("nested deeper than {} levels", limits.max_depth));
                }
                match marker {
                    0x03 => stack.push(Ctx::Object),
                    0x08 => {
                        take(&mut pos, 4)?;
                        stack.push(Ctx::Object);
                    }
                    _ => {
                        let at = take(&mut pos, 4)?;
                        let n = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                        stack.push(Ctx::Array(n));
                    }
                }
            }
            other => return Err(format!("unsupported AMF0 marker 0x{other:02x}")),
        }
    }
    if !stack.is_empty() {
        return Err("truncated inside an object or array".into());
    }
    if command && top < 3 {
        return Err(format!("a command needs a name, a transaction number and an object; it has {top} values"));
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use rml_rtmp::rml_amf0::{serialize, Amf0Value};

    use super::*;

    fn bytes(values: Vec<Amf0Value>) -> Vec<u8> {
        serialize(&values).unwrap()
    }

    #[test]
    fn accepts_what_clients_send() {
        let mut props = std::collections::HashMap::new();
        props.insert("app".to_owned(), Amf0Value::Utf8String("live".into()));
        props.insert("tcUrl".to_owned(), Amf0Value::Utf8String("rtmp://x/live".into()));
        props.insert("fpad".to_owned(), Amf0Value::Boolean(false));
        props.insert("nested".to_owned(), Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Null]));
        let connect =
            bytes(vec![Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0), Amf0Value::Object(props)]);
        assert_eq!(check(&connect, AmfLimits::default(), true), Ok(3));
        let publish = bytes(vec![
            Amf0Value::Utf8String("publish".into()),
            Amf0Value::Number(5.0),
            Amf0Value::Null,
            Amf0Value::Utf8String("sk_x".into()),
            Amf0Value::Utf8String("live".into()),
        ]);
        assert_eq!(check(&publish, AmfLimits::default(), true), Ok(5));
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        // A megabyte of nested strict arrays: the library would overflow the stack.
        let mut deep = bytes(vec![Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0)]);
        for _ in 0..200_000 {
            deep.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        let e = check(&deep, AmfLimits::default(), true).unwrap_err();
        assert!(e.contains("nested deeper than 16"), "{e}");
        let mut objects = Vec::new();
        for _ in 0..20 {
            objects.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        assert!(check(&objects, AmfLimits::default(), false).unwrap_err().contains("nested"));
    }

    #[test]
    fn refuses_short_commands_and_garbage() {
        // What made the library panic: a command with two values.
        let short = bytes(vec![Amf0Value::Utf8String("connect".into()), Amf0Value::Number(1.0)]);
        assert!(check(&short, AmfLimits::default(), true).unwrap_err().contains("2 values"));
        assert!(check(&[0x02, 0x00, 0x10, b'a'], AmfLimits::default(), true).unwrap_err().contains("truncated"));
        assert!(check(&[0x0d], AmfLimits::default(), false).unwrap_err().contains("marker"));
        let many = vec![0x05; 5000];
        assert!(check(&many, AmfLimits::default(), false).unwrap_err().contains("more than 4096"));
        let data = bytes(vec![Amf0Value::Utf8String("@setDataFrame".into()), Amf0Value::Null]);
        assert_eq!(check(&data, AmfLimits::default(), false), Ok(2));
    }
}
