//! A test double of the object store shared by the filesystem's unit tests:
//! it forwards to a real (in-memory or local) store, counts the requests,
//! and on demand fails them, reports keys a listing left out, or sends more
//! than the range asked for (a hostile server).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// An [`ObjectStore`] that counts the requests it forwards.
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    /// When set, a ranged GET sends the whole object while it says it sent
    /// the range (a hostile server).
    pub(crate) oversend: AtomicBool,
    pub(crate) heads: AtomicUsize,
    pub(crate) gets: AtomicUsize,
    pub(crate) lists: AtomicUsize,
    /// When set, every read request fails with the error this makes.
    pub(crate) failure: Mutex<Option<fn() -> object_store::Error>>,
    /// Raw keys every delimited listing reports as left out (what the
    /// patched S3 client does with keys that are not valid paths).
    pub(crate) unparseable: Mutex<Vec<String>>,
    /// When set, every GET waits this long before it is answered.
    pub(crate) get_delay: Mutex<Option<std::time::Duration>>,
    gets_in_flight: AtomicUsize,
    /// The most GETs that were waiting for their answer at once.
    pub(crate) most_gets_in_flight: AtomicUsize,
}

impl CountingStore {
    /// A double forwarding to `inner`.
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(CountingStore {
            inner,
            heads: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            failure: Mutex::new(None),
            oversend: AtomicBool::new(false),
            unparseable: Mutex::new(Vec::new()),
            get_delay: Mutex::new(None),
            gets_in_flight: AtomicUsize::new(0),
            most_gets_in_flight: AtomicUsize::new(0),
        })
    }

    /// Makes every read request fail with `failure` (None: none).
    pub(crate) fn fail_with(&self, failure: Option<fn() -> object_store::Error>) {
        *self.failure.lock().unwrap() = failure;
    }

    pub(crate) fn injected(&self) -> Option<object_store::Error> {
        self.failure.lock().unwrap().map(|make| make())
    }

    pub(crate) fn requests(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
            + self.gets.load(Ordering::SeqCst)
            + self.lists.load(Ordering::SeqCst)
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if let Some(err) = self.injected() {
            return Err(err);
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let counter = if options.head {
            &self.heads
        } else {
            &self.gets
        };
        counter.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.injected() {
            return Err(err);
        }
        let delay = *self.get_delay.lock().unwrap();
        if let Some(delay) = delay.filter(|_| !options.head) {
            let now = self.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_gets_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            self.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if !self.oversend.load(Ordering::SeqCst) {
            return self.inner.get_opts(location, options).await;
        }
        let asked = options.range.clone();
        let mut whole = self
            .inner
            .get_opts(
                location,
                GetOptions {
                    range: None,
                    ..options
                },
            )
            .await?;
        if let Some(object_store::GetRange::Bounded(range)) = asked {
            whole.range = range;
        }
        Ok(whole)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.injected() {
            return futures::stream::once(async move { Err(err) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if let Some(err) = self.injected() {
            return Err(err);
        }
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        let unparseable = self.unparseable.lock().unwrap().clone();
        if !unparseable.is_empty() {
            listed
                .extensions
                .insert(object_store::list::SkippedKeys(unparseable));
        }
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
