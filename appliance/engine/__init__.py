"""Sans-io TCP session engine: captured client segments and target headers in, packets out."""
