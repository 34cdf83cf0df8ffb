namespace BlockRepl.Replication.Grpc;

/// <summary>
/// gRPC status codes (grpc/doc/statuscodes.md). The numeric values are the wire values of the
/// <c>grpc-status</c> trailer; the names match Grpc.Core's enum so callers port unchanged.
/// </summary>
internal enum StatusCode
{
    OK = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}
