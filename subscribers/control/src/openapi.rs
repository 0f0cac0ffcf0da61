//! The OpenAPI 3.1 document of the API, generated from the handlers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The control plane's part of the OpenAPI document; other parts' routes
/// (the recordings API) are merged in by [`Control::new`](crate::Control::new).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gopbus API",
        description = "Streams (keys and URLs), live broadcasts and recordings of a gopbus node. \
            Every route but this document needs `Authorization: Bearer ADMIN_TOKEN`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        crate::streams::create,
        crate::streams::list,
        crate::streams::get_one,
        crate::streams::rotate,
        crate::streams::remove,
        crate::broadcasts::list,
        crate::broadcasts::get_one,
        crate::broadcasts::kick,
        crate::api::deliveries,
    ),
    components(schemas(crate::api::Error)),
    modifiers(&AdminAuth),
    tags(
        (name = "streams", description = "Stream names and their secret keys"),
        (name = "broadcasts", description = "What is live on this node"),
        (name = "webhooks", description = "The webhook outbox"),
    )
)]
pub struct ApiDoc;

/// The `admin` security scheme: a bearer token.
struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token: DATA/admin-token, --admin-token or GOPBUS_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}
