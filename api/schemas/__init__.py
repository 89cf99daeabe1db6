"""The API's request and response models, one module per area (`...In` bodies,
`...Out` answers, pages). Class names are the OpenAPI component names: keep them."""
