//! The Qdrant-server backend (`QdrantServerStore`, gRPC through `qdrant-client`) against the
//! same checks as the in-process store. No Qdrant server can be installed on these machines,
//! so the wire behaviour is covered by `QdrantGrpcStandIn`: a local gRPC server that decodes
//! the real Qdrant protobuf messages the client sends (collections, payload indexes, upsert,
//! filtered query, count, delete by filter) and answers them from memory with exact cosine
//! search. It is a stand-in, not Qdrant. When `QDRANT_URL` is set (e.g.
//! `http://localhost:6334`), the same checks also run against that real server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kefu_rag::vector::{QdrantServerStore, VectorError, VectorPoint, VectorStore};
use qdrant_client::qdrant::{
    self, CollectionExists, CollectionExistsRequest, CollectionExistsResponse,
    CollectionOperationResponse, CountPoints, CountResponse, CountResult, CreateCollection,
    CreateFieldIndexCollection, DeletePoints, Filter, PointId, PointsOperationResponse,
    QueryPoints, QueryResponse, ScoredPoint, UpdateResult, UpsertPoints,
};
use tonic::{Request, Response, Status};

fn vector(i: u64, dimension: usize) -> Vec<f32> {
    // Deterministic, well spread unit-ish vectors.
    (0..dimension)
        .map(|d| (((i * 31 + d as u64 * 17) % 97) as f32 - 48.0) / 48.0)
        .collect()
}

fn points(dimension: usize) -> Vec<VectorPoint> {
    (0..60u64)
        .map(|i| VectorPoint {
            id: i + 1,
            vector: vector(i, dimension),
            knowledge_base_id: if i < 40 { 1 } else { 2 },
            document_id: (i / 10) as i64,
            language: "en".into(),
        })
        .collect()
}

/// What every backend must do.
fn check_store(store: &dyn VectorStore, dimension: usize) {
    let all = points(dimension);
    store.upsert(&all).unwrap();
    let hits = store.search(&all[7].vector, 1, 5).unwrap();
    assert_eq!(hits[0].id, 8, "{hits:?}");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // Filtered by knowledge base: the nearest point of kb 2 to a kb-1 vector is in kb 2.
    let other = store.search(&all[7].vector, 2, 3).unwrap();
    assert!(other.iter().all(|h| h.id > 40), "{other:?}");
    assert_eq!(store.count_document(1).unwrap(), 10);
    store.delete_document(1).unwrap(); // ids 11..=20
    assert_eq!(store.count_document(1).unwrap(), 0);
    assert_eq!(store.count_document(2).unwrap(), 10);
    let after = store.search(&all[12].vector, 1, 5).unwrap();
    assert!(
        after.iter().all(|h| !(11..=20).contains(&h.id)),
        "{after:?}"
    );
    store.optimize().unwrap();
    store.flush().unwrap();
    let err = store.search(&[1.0, 2.0], 1, 3).unwrap_err();
    assert!(matches!(err, VectorError::Dimension { actual: 2, .. }));
}

#[derive(Default)]
struct StoredPoint {
    vector: Vec<f32>,
    payload: HashMap<String, qdrant::Value>,
}

#[derive(Default)]
struct State {
    /// collection → (dimension, points by id)
    collections: HashMap<String, (u64, HashMap<u64, StoredPoint>)>,
    indexes: Vec<(String, String)>,
}

/// The stand-in's shared memory.
#[derive(Clone, Default)]
struct QdrantGrpcStandIn(Arc<Mutex<State>>);

fn integer_of(value: &qdrant::Value) -> Option<i64> {
    match value.kind {
        Some(qdrant::value::Kind::IntegerValue(i)) => Some(i),
        _ => None,
    }
}

/// The filters the client sends: `must` of integer matches.
fn matches(filter: Option<&Filter>, point: &StoredPoint) -> Result<bool, Status> {
    let Some(filter) = filter else {
        return Ok(true);
    };
    if !filter.should.is_empty() || !filter.must_not.is_empty() {
        return Err(Status::unimplemented("stand-in: only `must` filters"));
    }
    for condition in &filter.must {
        let Some(qdrant::condition::ConditionOneOf::Field(field)) = &condition.condition_one_of
        else {
            return Err(Status::unimplemented("stand-in: only field conditions"));
        };
        let Some(qdrant::r#match::MatchValue::Integer(wanted)) =
            field.r#match.as_ref().and_then(|m| m.match_value.clone())
        else {
            return Err(Status::unimplemented("stand-in: only integer matches"));
        };
        if point.payload.get(&field.key).and_then(integer_of) != Some(wanted) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn num_id(id: Option<&PointId>) -> Result<u64, Status> {
    match id.and_then(|i| i.point_id_options.clone()) {
        Some(qdrant::point_id::PointIdOptions::Num(n)) => Ok(n),
        _ => Err(Status::invalid_argument("stand-in: numeric point ids only")),
    }
}

fn dense_of(vectors: Option<&qdrant::Vectors>) -> Result<Vec<f32>, Status> {
    match vectors.and_then(|v| v.vectors_options.as_ref()) {
        Some(qdrant::vectors::VectorsOptions::Vector(v)) => match &v.vector {
            Some(qdrant::vector::Vector::Dense(d)) => Ok(d.data.clone()),
            _ => Err(Status::invalid_argument("stand-in: dense vectors only")),
        },
        _ => Err(Status::invalid_argument("stand-in: one unnamed vector")),
    }
}

fn done() -> PointsOperationResponse {
    PointsOperationResponse {
        result: Some(UpdateResult {
            operation_id: Some(0),
            status: qdrant::UpdateStatus::Completed as i32,
        }),
        time: 0.0,
        usage: None,
    }
}

impl QdrantGrpcStandIn {
    fn with_collection<T>(
        &self,
        name: &str,
        f: impl FnOnce(u64, &mut HashMap<u64, StoredPoint>) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut state = self.0.lock().unwrap();
        let (dimension, points) = state
            .collections
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("Collection `{name}` doesn't exist!")))?;
        f(*dimension, points)
    }

    fn exists(&self, r: CollectionExistsRequest) -> Result<CollectionExistsResponse, Status> {
        let exists = self
            .0
            .lock()
            .unwrap()
            .collections
            .contains_key(&r.collection_name);
        Ok(CollectionExistsResponse {
            result: Some(CollectionExists { exists }),
            time: 0.0,
        })
    }

    fn create(&self, r: CreateCollection) -> Result<CollectionOperationResponse, Status> {
        let size = match r.vectors_config.and_then(|c| c.config) {
            Some(qdrant::vectors_config::Config::Params(p)) => {
                if p.distance != qdrant::Distance::Cosine as i32 {
                    return Err(Status::unimplemented("stand-in: cosine only"));
                }
                p.size
            }
            _ => return Err(Status::invalid_argument("stand-in: one unnamed vector")),
        };
        let mut state = self.0.lock().unwrap();
        if state.collections.contains_key(&r.collection_name) {
            return Err(Status::already_exists("collection exists"));
        }
        state
            .collections
            .insert(r.collection_name, (size, HashMap::new()));
        Ok(CollectionOperationResponse {
            result: true,
            time: 0.0,
        })
    }

    fn field_index(
        &self,
        r: CreateFieldIndexCollection,
    ) -> Result<PointsOperationResponse, Status> {
        self.with_collection(&r.collection_name, |_, _| Ok(()))?;
        self.0
            .lock()
            .unwrap()
            .indexes
            .push((r.collection_name, r.field_name));
        Ok(done())
    }

    fn upsert(&self, r: UpsertPoints) -> Result<PointsOperationResponse, Status> {
        self.with_collection(&r.collection_name, |dimension, points| {
            for point in r.points {
                let vector = dense_of(point.vectors.as_ref())?;
                if vector.len() as u64 != dimension {
                    return Err(Status::invalid_argument("wrong vector dimension"));
                }
                let id = num_id(point.id.as_ref())?;
                points.insert(
                    id,
                    StoredPoint {
                        vector,
                        payload: point.payload,
                    },
                );
            }
            Ok(done())
        })
    }

    fn query(&self, r: QueryPoints) -> Result<QueryResponse, Status> {
        let query = match r.query.and_then(|q| q.variant) {
            Some(qdrant::query::Variant::Nearest(input)) => match input.variant {
                Some(qdrant::vector_input::Variant::Dense(d)) => d.data,
                _ => return Err(Status::unimplemented("stand-in: dense nearest only")),
            },
            _ => return Err(Status::unimplemented("stand-in: nearest queries only")),
        };
        let limit = r.limit.unwrap_or(10) as usize;
        self.with_collection(&r.collection_name, |_, points| {
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let mut scored = Vec::new();
            for (id, point) in points.iter() {
                if matches(r.filter.as_ref(), point)? {
                    let dot: f32 = point.vector.iter().zip(&query).map(|(a, b)| a * b).sum();
                    scored.push((*id, dot / (norm(&point.vector) * norm(&query))));
                }
            }
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            scored.truncate(limit);
            Ok(QueryResponse {
                result: scored
                    .into_iter()
                    .map(|(id, score)| ScoredPoint {
                        id: Some(id.into()),
                        score,
                        ..ScoredPoint::default()
                    })
                    .collect(),
                time: 0.0,
                usage: None,
            })
        })
    }

    fn delete(&self, r: DeletePoints) -> Result<PointsOperationResponse, Status> {
        let filter = match r.points.and_then(|p| p.points_selector_one_of) {
            Some(qdrant::points_selector::PointsSelectorOneOf::Filter(f)) => f,
            _ => return Err(Status::unimplemented("stand-in: delete by filter only")),
        };
        self.with_collection(&r.collection_name, |_, points| {
            let mut doomed = Vec::new();
            for (id, point) in points.iter() {
                if matches(Some(&filter), point)? {
                    doomed.push(*id);
                }
            }
            for id in doomed {
                points.remove(&id);
            }
            Ok(done())
        })
    }

    fn count(&self, r: CountPoints) -> Result<CountResponse, Status> {
        self.with_collection(&r.collection_name, |_, points| {
            let mut count = 0;
            for point in points.values() {
                if matches(r.filter.as_ref(), point)? {
                    count += 1;
                }
            }
            Ok(CountResponse {
                result: Some(CountResult { count }),
                time: 0.0,
                usage: None,
            })
        })
    }
}

/// Adapts a handler to tonic's unary-call interface.
struct Unary<F>(F);

impl<Req, Resp, F> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(Req) -> Result<Resp, Status>,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = std::future::Ready<Result<Response<Resp>, Status>>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        std::future::ready((self.0)(request.into_inner()).map(Response::new))
    }
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

async fn unary<Req, Resp>(
    request: HttpRequest,
    handler: impl FnMut(Req) -> Result<Resp, Status>,
) -> HttpResponse
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
    tonic::server::Grpc::new(codec)
        .unary(Unary(handler), request)
        .await
}

async fn route(stand_in: QdrantGrpcStandIn, request: HttpRequest) -> HttpResponse {
    let s = stand_in;
    match request.uri().path() {
        "/qdrant.Collections/CollectionExists" => unary(request, |r| s.exists(r)).await,
        "/qdrant.Collections/Create" => unary(request, |r| s.create(r)).await,
        "/qdrant.Points/CreateFieldIndex" => unary(request, |r| s.field_index(r)).await,
        "/qdrant.Points/Upsert" => unary(request, |r| s.upsert(r)).await,
        "/qdrant.Points/Query" => unary(request, |r| s.query(r)).await,
        "/qdrant.Points/Delete" => unary(request, |r| s.delete(r)).await,
        "/qdrant.Points/Count" => unary(request, |r| s.count(r)).await,
        other => Status::unimplemented(format!("stand-in: {other}")).into_http(),
    }
}

macro_rules! grpc_service {
    ($name:ident, $service:literal) => {
        #[derive(Clone)]
        struct $name(QdrantGrpcStandIn);

        impl tonic::server::NamedService for $name {
            const NAME: &'static str = $service;
        }

        impl tower_service::Service<HttpRequest> for $name {
            type Response = HttpResponse;
            type Error = std::convert::Infallible;
            type Future = std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<HttpResponse, Self::Error>> + Send>,
            >;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: HttpRequest) -> Self::Future {
                let stand_in = self.0.clone();
                Box::pin(async move { Ok(route(stand_in, request).await) })
            }
        }
    };
}

grpc_service!(CollectionsStandIn, "qdrant.Collections");
grpc_service!(PointsStandIn, "qdrant.Points");

/// Starts the stand-in on a free local port; returns its URL and the shared state.
fn start_stand_in(runtime: &tokio::runtime::Runtime) -> (String, QdrantGrpcStandIn) {
    let stand_in = QdrantGrpcStandIn::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(CollectionsStandIn(stand_in.clone()))
        .add_service(PointsStandIn(stand_in.clone()))
        .serve_with_incoming(incoming);
    runtime.spawn(server);
    (format!("http://{address}"), stand_in)
}

#[test]
fn the_qdrant_server_backend_speaks_the_qdrant_protocol() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, stand_in) = start_stand_in(&runtime);
    let dimension = 16;
    let store = QdrantServerStore::connect(&url, "kefu_test", dimension).unwrap();
    {
        let state = stand_in.0.lock().unwrap();
        assert_eq!(state.collections["kefu_test"].0, 16);
        assert_eq!(
            state.indexes.len(),
            2,
            "payload indexes on knowledge base and document"
        );
    }
    check_store(&store, dimension);
    {
        let state = stand_in.0.lock().unwrap();
        let points = &state.collections["kefu_test"].1;
        assert_eq!(points.len(), 50);
        let payload = &points[&45].payload;
        assert_eq!(integer_of(&payload["knowledge_base_id"]), Some(2));
        assert_eq!(integer_of(&payload["document_id"]), Some(4));
    }
    drop(store);
    // Connecting again finds the collection instead of recreating it.
    let again = QdrantServerStore::connect(&url, "kefu_test", dimension).unwrap();
    assert_eq!(again.count_document(4).unwrap(), 10);

    // Nobody listening: a clear error, no panic.
    let err = QdrantServerStore::connect("http://127.0.0.1:9", "kefu_test", dimension)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach the Qdrant server"), "{err}");

    // A real Qdrant server, where one is reachable.
    if let Ok(url) = std::env::var("QDRANT_URL") {
        let collection = format!("kefu_test_{}", std::process::id());
        let store = QdrantServerStore::connect(&url, &collection, dimension).unwrap();
        check_store(&store, dimension);
    } else {
        eprintln!("QDRANT_URL is not set: checked against the stand-in only");
    }
}
