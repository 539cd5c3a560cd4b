//! Just enough of the ONNX format to write an inference graph: a protobuf encoder for the
//! messages ONNX Runtime reads (model, graph, node, attribute, tensor, value info) and a small
//! graph builder. Used to turn model files that ship in other containers into `model.onnx`
//! for fastembed.

/// Protobuf wire encoding into a byte buffer.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn int(&mut self, field: u32, value: i64) {
        self.key(field, 0);
        self.varint(value as u64);
    }

    fn float(&mut self, field: u32, value: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, text: &str) {
        self.bytes(field, text.as_bytes());
    }

    fn message(&mut self, field: u32, message: &Proto) {
        self.bytes(field, &message.0);
    }
}

/// ONNX element types (TensorProto.DataType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Uint8 = 2,
    Int64 = 7,
}

/// A constant tensor stored in the graph.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    /// Little-endian element bytes.
    pub raw: Vec<u8>,
}

impl Tensor {
    pub fn float(name: &str, dims: &[i64], values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float,
            raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn int64(name: &str, dims: &[i64], values: &[i64]) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int64,
            raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn uint8(name: &str, dims: &[i64], values: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Uint8,
            raw: values,
        }
    }

    fn encode(&self) -> Proto {
        let mut p = Proto::default();
        for &d in &self.dims {
            p.int(1, d);
        }
        p.int(2, self.data_type as i64);
        p.string(8, &self.name);
        p.bytes(9, &self.raw);
        p
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attribute {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone)]
struct Node {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<(String, Attribute)>,
}

/// A graph input or output: a tensor with symbolic or fixed dimensions.
#[derive(Debug, Clone)]
pub struct ValueInfo {
    pub name: String,
    pub data_type: DataType,
    /// `Ok(n)` a fixed size, `Err(name)` a symbolic one.
    pub dims: Vec<Result<i64, String>>,
}

impl ValueInfo {
    fn encode(&self) -> Proto {
        let mut shape = Proto::default();
        for dim in &self.dims {
            let mut d = Proto::default();
            match dim {
                Ok(n) => d.int(1, *n),
                Err(name) => d.string(2, name),
            }
            shape.message(1, &d);
        }
        let mut tensor_type = Proto::default();
        tensor_type.int(1, self.data_type as i64);
        tensor_type.message(2, &shape);
        let mut type_proto = Proto::default();
        type_proto.message(1, &tensor_type);
        let mut p = Proto::default();
        p.string(1, &self.name);
        p.message(2, &type_proto);
        p
    }
}

/// Builds a graph node by node; names of intermediate values are generated.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Tensor>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    counter: usize,
}

impl Graph {
    pub fn input(&mut self, info: ValueInfo) -> String {
        let name = info.name.clone();
        self.inputs.push(info);
        name
    }

    pub fn output(&mut self, info: ValueInfo) {
        self.outputs.push(info);
    }

    /// Adds a constant and returns its name.
    pub fn constant(&mut self, tensor: Tensor) -> String {
        let name = tensor.name.clone();
        self.initializers.push(tensor);
        name
    }

    /// Adds a scalar float constant with a generated name.
    pub fn scalar(&mut self, value: f32) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.constant(Tensor::float(&name, &[], &[value]))
    }

    /// Adds a 1-D int64 constant with a generated name.
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.constant(Tensor::int64(&name, &[values.len() as i64], values))
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attributes: &[(&str, Attribute)]) -> String {
        self.counter += 1;
        let output = format!("{}_{}", op.to_ascii_lowercase(), self.counter);
        self.op_named(op, inputs, attributes, &output);
        output
    }

    /// Adds a node whose output has a chosen name (a graph output, say).
    pub fn op_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: &[(&str, Attribute)],
        output: &str,
    ) {
        self.nodes.push(Node {
            op: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.into()],
            attributes: attributes
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
        });
    }

    /// The serialized `ModelProto` (IR version 9, default opset `opset`).
    pub fn to_model_bytes(&self, name: &str, opset: i64) -> Vec<u8> {
        let mut graph = Proto::default();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut n = Proto::default();
            for input in &node.inputs {
                n.string(1, input);
            }
            for output in &node.outputs {
                n.string(2, output);
            }
            n.string(3, &format!("n{i}"));
            n.string(4, &node.op);
            for (attr_name, attr) in &node.attributes {
                let mut a = Proto::default();
                a.string(1, attr_name);
                match attr {
                    Attribute::Float(f) => {
                        a.float(2, *f);
                        a.int(20, 1);
                    }
                    Attribute::Int(i) => {
                        a.int(3, *i);
                        a.int(20, 2);
                    }
                    Attribute::Ints(values) => {
                        for v in values {
                            a.int(8, *v);
                        }
                        a.int(20, 7);
                    }
                }
                n.message(5, &a);
            }
            graph.message(1, &n);
        }
        graph.string(2, name);
        for tensor in &self.initializers {
            graph.message(5, &tensor.encode());
        }
        for input in &self.inputs {
            graph.message(11, &input.encode());
        }
        for output in &self.outputs {
            graph.message(12, &output.encode());
        }
        let mut opset_import = Proto::default();
        opset_import.string(1, "");
        opset_import.int(2, opset);
        let mut model = Proto::default();
        model.int(1, 9);
        model.string(2, "kefu");
        model.message(7, &graph);
        model.message(8, &opset_import);
        model.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_follow_the_protobuf_wire_format() {
        let mut p = Proto::default();
        p.int(1, 300);
        assert_eq!(p.0, [0x08, 0xac, 0x02]);
        let mut p = Proto::default();
        p.string(2, "ab");
        assert_eq!(p.0, [0x12, 2, b'a', b'b']);
        let mut p = Proto::default();
        p.int(1, -1);
        assert_eq!(p.0.len(), 11, "negative int64 takes ten varint bytes");
    }
}
