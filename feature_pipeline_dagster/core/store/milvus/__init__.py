"""The `VectorStore` of Milvus, by concern: `client` (connecting, retries, where Milvus
Lite and a server differ), `schema` (collections from the config), `filters` (quoted
names, `RowFilter` into an expression) and `store` (`MilvusStore`: writes by generation,
the ledger, reads, search). Importers name the module."""
