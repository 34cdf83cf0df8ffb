namespace BlockRepl.Replication.Grpc;

/// <summary>The request stream of a client call.</summary>
internal interface IClientStreamWriter<in T> : IAsyncStreamWriter<T>
{
    /// <summary>Ends the request stream (HTTP/2 END_STREAM): the server's reader sees the end.</summary>
    Task CompleteAsync();
}
