using System.Globalization;
using System.Net;
using System.Net.Http.Headers;

namespace BlockRepl.Replication.Grpc;

/// <summary>Header names and the status rules of gRPC over HTTP/2 shared by the server and client sides.</summary>
internal static class GrpcProtocol
{
    public const string ContentType = "application/grpc";
    public const string StatusHeader = "grpc-status";
    public const string MessageHeader = "grpc-message";
    public const string EncodingHeader = "grpc-encoding";
    public const string AcceptEncodingHeader = "grpc-accept-encoding";
    public const string UserAgent = "blockrepl-grpc/1.0";

    /// <summary>
    /// True for "application/grpc" and "application/grpc+proto" (also with parameters), false for
    /// other subtypes such as application/grpc-web or +json.
    /// </summary>
    public static bool IsGrpcContentType(string? contentType)
    {
        if (contentType is null || !contentType.StartsWith(ContentType, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        var rest = contentType.AsSpan(ContentType.Length);
        var semicolon = rest.IndexOf(';');
        if (semicolon >= 0)
        {
            rest = rest[..semicolon];
        }

        rest = rest.Trim();
        return rest.IsEmpty || rest.Equals("+proto", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Parses a grpc-status value; an absent or malformed one is UNKNOWN, as the spec says.</summary>
    public static StatusCode ParseStatusCode(string? value) =>
        int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var code) && code is >= 0 and <= 16
            ? (StatusCode)code
            : StatusCode.Unknown;

    public static string FormatStatusCode(StatusCode code) => ((int)code).ToString(CultureInfo.InvariantCulture);

    /// <summary>The status carried in <paramref name="headers"/>, or null when it has no grpc-status.</summary>
    public static Status? ReadStatus(HttpHeaders headers)
    {
        if (!headers.TryGetValues(StatusHeader, out var codes))
        {
            return null;
        }

        var code = ParseStatusCode(codes.FirstOrDefault());
        var detail = headers.TryGetValues(MessageHeader, out var messages)
            ? PercentEncoding.Decode(messages.FirstOrDefault() ?? string.Empty)
            : string.Empty;
        return new Status(code, detail);
    }

    /// <summary>
    /// Status for a response that is not a gRPC response (grpc/doc/http-grpc-status-mapping.md).
    /// </summary>
    public static StatusCode FromHttpStatus(HttpStatusCode status) => status switch
    {
        HttpStatusCode.BadRequest => StatusCode.Internal,
        HttpStatusCode.Unauthorized => StatusCode.Unauthenticated,
        HttpStatusCode.Forbidden => StatusCode.PermissionDenied,
        HttpStatusCode.NotFound => StatusCode.Unimplemented,
        HttpStatusCode.TooManyRequests or HttpStatusCode.BadGateway
            or HttpStatusCode.ServiceUnavailable or HttpStatusCode.GatewayTimeout => StatusCode.Unavailable,
        _ => StatusCode.Unknown,
    };
}
