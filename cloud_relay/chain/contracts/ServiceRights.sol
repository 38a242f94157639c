// SPDX-License-Identifier: LicenseRef-Proprietary
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC1155} from "@openzeppelin/contracts/token/ERC1155/ERC1155.sol";

/// @title Service rights as ERC-1155 tokens (issue 19).
/// @notice One token id per (asset, service kind, terms): a clinic holding `n` units of an id may perform `n` uses
/// of that service on that asset under those terms. The issuer (manufacturer or financier) defines and mints rights
/// to a clinic's address; clinics trade unused units with the standard ERC-1155 transfers; the settler (the relay)
/// burns the units each verified settlement consumed, once per (settlement, id, holder).
/// @dev The terms themselves live off chain (the relay's canonical JSON of a grant's terms); the contract keeps their
/// keccak256 and a URI. Replays are refused on chain: a mint's `requestId` and a burn's `settlementId` are each used
/// once, so a relay that resends a transaction after a crash never mints or burns twice.
contract ServiceRights is ERC1155, AccessControl {
    bytes32 public constant ISSUER_ROLE = keccak256("ISSUER_ROLE");
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    struct Terms {
        bytes32 asset; // keccak256 of the utf-8 asset id
        string serviceKind; // e.g. "analysis"
        bytes32 termsHash; // keccak256 of the canonical JSON of the grant's terms
        string termsUri; // where the terms document can be fetched
    }

    mapping(uint256 id => Terms) private _terms;
    mapping(bytes32 requestId => bool) private _usedRequests;
    mapping(bytes32 burnKey => bool) private _burns; // burnKey = keccak256(abi.encode(settlementId, id, from))

    event RightDefined(uint256 indexed id, bytes32 indexed asset, string serviceKind, bytes32 termsHash, string termsUri);
    event Minted(bytes32 indexed requestId, address indexed to, uint256 indexed id, uint256 amount);
    event Consumed(bytes32 indexed settlementId, address indexed from, uint256 indexed id, uint256 amount);

    error UndefinedRight(uint256 id);
    error RequestAlreadyUsed(bytes32 requestId);
    error AlreadyBurned(bytes32 settlementId, uint256 id, address from);
    error ZeroIdentifier();

    constructor() ERC1155("") {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice The token id of a right: uint256(keccak256(abi.encode(asset, serviceKind, termsHash))).
    function rightId(bytes32 asset, string memory serviceKind, bytes32 termsHash) public pure returns (uint256) {
        return uint256(keccak256(abi.encode(asset, serviceKind, termsHash)));
    }

    /// @notice Define a right (idempotent: defining it again returns the same id and emits nothing).
    function defineRight(bytes32 asset, string calldata serviceKind, bytes32 termsHash, string calldata termsUri)
        external
        onlyRole(ISSUER_ROLE)
        returns (uint256 id)
    {
        if (asset == bytes32(0) || termsHash == bytes32(0)) revert ZeroIdentifier();
        id = rightId(asset, serviceKind, termsHash);
        if (_terms[id].asset != bytes32(0)) return id;
        _terms[id] = Terms(asset, serviceKind, termsHash, termsUri);
        emit RightDefined(id, asset, serviceKind, termsHash, termsUri);
    }

    /// @notice Mint `amount` units of a defined right to `to`; `requestId` (the issuer's request) is used once.
    function mint(address to, uint256 id, uint256 amount, bytes32 requestId) external onlyRole(ISSUER_ROLE) {
        if (_terms[id].asset == bytes32(0)) revert UndefinedRight(id);
        if (requestId == bytes32(0)) revert ZeroIdentifier();
        if (_usedRequests[requestId]) revert RequestAlreadyUsed(requestId);
        _usedRequests[requestId] = true; // effects before the receiver hook _mint may call
        emit Minted(requestId, to, id, amount);
        _mint(to, id, amount, "");
    }

    /// @notice Burn the `amount` units `from` consumed in the verified settlement `settlementId`, once.
    /// @dev The settler burns without the holder's approval: the holder's own device signed the receipts the relay
    /// verified, and the relay's conclusion is what this records.
    function burnConsumed(address from, uint256 id, uint256 amount, bytes32 settlementId)
        external
        onlyRole(SETTLER_ROLE)
    {
        if (settlementId == bytes32(0)) revert ZeroIdentifier();
        bytes32 key = _burnKey(settlementId, id, from);
        if (_burns[key]) revert AlreadyBurned(settlementId, id, from);
        _burns[key] = true;
        _burn(from, id, amount);
        emit Consumed(settlementId, from, id, amount);
    }

    function usedRequest(bytes32 requestId) external view returns (bool) {
        return _usedRequests[requestId];
    }

    function burned(bytes32 settlementId, uint256 id, address from) external view returns (bool) {
        return _burns[_burnKey(settlementId, id, from)];
    }

    function terms(uint256 id)
        external
        view
        returns (bytes32 asset, string memory serviceKind, bytes32 termsHash, string memory termsUri)
    {
        Terms storage t = _terms[id];
        return (t.asset, t.serviceKind, t.termsHash, t.termsUri);
    }

    /// @notice ERC-1155 metadata: a right's URI is its terms URI.
    function uri(uint256 id) public view override returns (string memory) {
        return _terms[id].termsUri;
    }

    function supportsInterface(bytes4 interfaceId) public view override(ERC1155, AccessControl) returns (bool) {
        return super.supportsInterface(interfaceId);
    }

    function _burnKey(bytes32 settlementId, uint256 id, address from) private pure returns (bytes32) {
        return keccak256(abi.encode(settlementId, id, from));
    }
}
